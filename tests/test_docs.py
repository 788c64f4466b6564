"""Every code block of the README and of the docs runs here, so a snippet cannot rot.

Each page's blocks run in order in one temporary working directory (a copy of ``examples/``
is there, so ``examples/data/prefs.jsonl`` reads as it does from a clone), each in its own
process: a later block can use what an earlier one wrote (``runs/rm``), and nothing is
written into the repository.

* ```` ```python ```` blocks run as scripts; ```` ```bash ```` blocks run line by line:
  ``textenv ...`` and ``python examples/...`` run with small sizes appended (argparse keeps
  the last value of a flag), ``make TARGET`` is dry-run (``make -n``: the target exists;
  the targets themselves are the main job and this suite).
* The fast tests (``make test``) swap the default model for ``tiny-random`` (and the reward
  models' MiniLM backbone too); ``pytest -m slow`` runs the README on the default model, at
  the same small sizes. Python blocks get their sizes from the same rules
  (``total_episodes=768`` runs 64 episodes, one iteration).
* Other languages (``toml``, ``text``, ``yaml``) are not run. A comment on the line before a
  fence changes that: ``<!-- docs-test: skip: REASON -->`` (not run, and why),
  ``<!-- docs-test: file NAME -->`` (the block is written to NAME for the blocks after it),
  ``<!-- docs-test: terminal -->`` (each command gets a pseudo-terminal with a simulated
  person pressing keys at it, as ``tests/test_feedback_session.py`` does).

``docs/cli.md`` is generated from ``textenv <command> --help`` by ``docs/scripts/cli_reference.py``;
a test here checks that it matches.
"""

from __future__ import annotations

import os
import pty
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import patience
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

NOT_RUN_PAGES = {
    "BENCHMARKS.md": "its commands are the benchmarks themselves: minutes to hours each on the default model",
    "cli.md": "generated from --help (test_cli_reference_matches_the_commands checks it)",
}
"""Pages under docs/ whose blocks are not run, and why."""

RUN_LANGUAGES = {"python", "bash"}

TINY_MODELS = {"smollm2-135m": "tiny-random", "all-minilm-l6-v2": "tiny-random"}
"""The fast tests' stand-ins for the models a reader runs."""

TEXTENV_SIZES = {
    "train": ["--iterations", "1", "--batch-size", "8", "--mini-batch-size", "8", "--eval-prompts", "2",
              "--max-new-tokens", "8", "--no-progress"],
    "sft": ["--epochs", "1", "--max-length", "64"],
    "rm train": ["--epochs", "1", "--max-length", "64"],
    "feedback label": ["--rounds", "1", "--num-prompts", "2", "--max-new-tokens", "8"],
    "demo": ["--max-new-tokens", "8"],
}
"""Flags appended to each ``textenv`` command (the last value of a flag wins)."""

DEFAULT_MODEL_FLAG = {"train": "--model", "sft": "--model", "demo": "--model", "feedback label": "--model",
                      "rm train": "--backbone"}
"""The commands whose default model the fast tests swap for tiny-random, when the line names none."""

EXAMPLE_SIZES = {
    "train_ppo.py": ["--episodes", "16", "--max-new-tokens", "4"],
    "custom_reward.py": ["--num-prompts", "2", "--max-new-tokens", "4"],
    "rlhf_pipeline.py": ["--tiny"],
    "sb3_ppo.py": ["--timesteps", "512", "--eval-episodes", "4"],
}
"""Arguments appended to ``python examples/SCRIPT``."""

PYTHON_SIZES = [(r"total_episodes=\d+", "total_episodes=64"), (r"\bepochs=\d+", "epochs=1")]
"""Regex substitutions that make a Python block small (the default batch is 64 episodes)."""

TERMINAL_PACE = "pace=200, gap=0.01, linger=0.05, min_delay=0.01, max_delay=0.2"
TERMINAL_PACE_FLAG = "200"
"""What ``pace=N`` in a reward spec and ``--pace N`` become: a simulated person reads as fast as the display goes."""

SAFE_COMMANDS = {"cat", "head", "ls", "wc"}
"""Shell commands that only read, run as written."""


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str
    marker: str = ""

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.language})"


def doc_pages() -> list[Path]:
    docs = [p for p in sorted(DOCS.rglob("*.md")) if p.relative_to(DOCS).as_posix() not in NOT_RUN_PAGES]
    return [ROOT / "README.md", *docs]


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a page, with the ``docs-test`` marker on the line before each (if any)."""
    lines = path.read_text().splitlines()
    blocks, i, previous = [], 0, ""
    while i < len(lines):
        line = lines[i]
        opening = re.match(r"^(\s*)```\s*([\w+-]*)", line)
        if not opening:
            if line.strip():
                previous = line.strip()
            i += 1
            continue
        assert not opening.group(1), f"{page_id(path)}:{i + 1}: an indented fence (the docs test reads column 0 only)"
        start, language = i + 1, opening.group(2).lower()
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{page_id(path)}:{start}: the block is never closed"
        marker = re.match(r"<!--\s*docs-test:\s*(.*?)\s*-->$", previous)
        blocks.append(Block(page_id(path), start, language, "\n".join(body) + "\n", marker.group(1) if marker else ""))
        previous = ""
        i += 1
    return blocks


def test_every_marker_is_understood_and_every_skip_says_why():
    for path in doc_pages():
        for block in code_blocks(path):
            m = block.marker
            assert (not m or m == "terminal" or re.match(r"file \S+$", m)
                    or re.match(r"skip: \S.{10,}", m)), f"{block}: unknown docs-test marker {m!r}"
            if block.language not in RUN_LANGUAGES and m.startswith(("terminal", "skip")):
                pytest.fail(f"{block}: a {block.language or 'plain'} block is never run; the marker is misleading")


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first = next(b for b in code_blocks(ROOT / "README.md"))
    assert first.code.split()[:2] == ["make", "train"] and "make test" in first.code


def test_the_benchmarks_page_is_a_reference_not_a_diary():
    """Each benchmark's current table, command, machine and one conclusion; the studies' full tables are on their
    guide pages, earlier runs in git."""
    assert len((DOCS / "BENCHMARKS.md").read_text().splitlines()) <= 250


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Runner:
    """Runs one page's blocks in ``cwd``; ``tiny`` swaps the default model for tiny-random."""

    cwd: Path
    tiny: bool

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "COLUMNS": "100"}
        if self.tiny:
            env["OMP_NUM_THREADS"] = "1"  # tiny models run fastest on one thread
        return env

    def models(self, text: str) -> str:
        if not self.tiny:
            return text
        for name, stand_in in TINY_MODELS.items():
            text = text.replace(name, stand_in)
        return text

    def run(self, block: Block) -> None:
        if block.marker.startswith("file "):
            target = self.cwd / block.marker.split(None, 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
            return
        if block.language not in RUN_LANGUAGES or block.marker.startswith("skip"):
            return
        if block.language == "python":
            self.python(block)
        else:
            for command in shell_commands(block.code):
                self.shell(block, command)

    def python(self, block: Block) -> None:
        code = self.models(block.code)
        for pattern, small in PYTHON_SIZES:
            code = re.sub(pattern, small, code)
        script = self.cwd / f"block_{Path(block.page).stem}_{block.line}.py"
        script.write_text(code)
        self.check(block, code, [sys.executable, script.name])

    def shell(self, block: Block, command: str) -> None:
        argv = shlex.split(command)
        if argv[0] == "make":
            argv = ["make", "-n", "-C", str(ROOT), *argv[1:]]
        elif argv[0] == "textenv":
            argv = self.textenv(argv)
        elif argv[0] in ("python", "python3") and argv[1].startswith("examples/"):
            argv = [sys.executable, *argv[1:], *EXAMPLE_SIZES[Path(argv[1]).name]]
        elif argv[:2] == ["accelerate", "launch"]:
            argv = self.accelerate(argv)
        elif argv[0] not in SAFE_COMMANDS:
            pytest.fail(f"{block}: tests/test_docs.py does not know how to run {command!r}: teach it, or put "
                        "<!-- docs-test: skip: REASON --> on the line before the block")
        if block.marker == "terminal":
            self.terminal(block, argv)
        else:
            self.check(block, shlex.join(argv), argv)

    def accelerate(self, argv: list[str]) -> list[str]:
        """``accelerate launch [...] -m textenv ...`` or ``... examples/SCRIPT``: the command sized as it would be
        alone, launched with this venv's accelerate on a free local port."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
        if "-m" in argv:
            at = argv.index("-m")
            return [*launcher, *argv[2:at], "-m", *self.textenv(argv[at + 1:])]
        script = next(i for i, a in enumerate(argv) if a.startswith("examples/"))
        return [*launcher, *argv[2:], *EXAMPLE_SIZES[Path(argv[script]).name]]

    def textenv(self, argv: list[str]) -> list[str]:
        argv = [self.models(a) for a in argv]
        command = next((c for c in sorted(TEXTENV_SIZES, key=len, reverse=True)
                        if argv[1:1 + len(c.split())] == c.split()), None)
        if command is None:
            return argv
        extra = list(TEXTENV_SIZES[command])
        if command == "train" and "--resume" in argv:
            extra[1] = "2"  # --iterations counts the resumed run's total
        flag = DEFAULT_MODEL_FLAG.get(command)
        if self.tiny and flag and flag not in argv:
            extra += [flag, "tiny-random"]
        return [*argv, *extra]

    def check(self, block: Block, shown: str, argv: list[str]) -> None:
        result = patience.run(argv, cwd=self.cwd, env=self.env())
        assert result.returncode == 0, (
            f"{block} exited {result.returncode}\n--- ran\n{shown}\n--- stdout\n{result.stdout[-3000:]}"
            f"\n--- stderr\n{result.stderr[-5000:]}"
        )

    def terminal(self, block: Block, argv: list[str]) -> None:
        """Run with a pseudo-terminal as stdin and stdout, a simulated person at its other end."""
        from textenv.plugins.human.simulated import HumanModel, SimulatedHuman

        argv = [re.sub(r"\bpace=\d+(\.\d+)?", TERMINAL_PACE, a) for a in argv]
        argv = [TERMINAL_PACE_FLAG if previous == "--pace" else a for previous, a in zip(["", *argv], argv)]
        master, slave = pty.openpty()
        log = self.cwd / "terminal-stderr.txt"
        with open(log, "w") as err:
            child = subprocess.Popen(argv, cwd=self.cwd, env=self.env(), stdin=slave, stdout=slave, stderr=err,
                                     close_fds=True)
        os.close(slave)
        try:
            with SimulatedHuman(behaviour=HumanModel().scaled(20), master_fd=master, seed=0) as person:
                patience.wait_for_exit(child, what=f"{block} to finish",
                                       progress=[lambda: len(person.screen), lambda: log.stat().st_size])
                screen = "".join(person.screen)
        finally:
            child.kill()
            child.wait()
            os.close(master)
        assert child.returncode == 0, (f"{block} exited {child.returncode}\n--- ran\n{shlex.join(argv)}\n"
                                       f"--- terminal\n{screen[-3000:]}\n--- stderr\n{log.read_text()[-5000:]}")


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: comments dropped, continuation lines joined."""
    commands, current = [], ""
    for line in code.splitlines():
        line = strip_comment(line).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def run_page(path: Path, tmp_path: Path, *, tiny: bool) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    runner = Runner(tmp_path, tiny=tiny)
    for block in code_blocks(path):
        runner.run(block)


@pytest.mark.parametrize("path", doc_pages(), ids=page_id)
def test_every_block_of_the_page_runs(path, tmp_path):
    run_page(path, tmp_path, tiny=True)


@pytest.mark.slow
def test_the_readme_runs_on_the_default_model(tmp_path):
    run_page(ROOT / "README.md", tmp_path, tiny=False)


def test_shell_comments_and_continuations_are_read_as_bash_does():
    code = 'textenv train --reward "a # b" \\\n  --lr 1  # the rate\n\n# only a comment\nmake test\n'
    assert [shlex.split(c) for c in shell_commands(code)] == [
        ["textenv", "train", "--reward", "a # b", "--lr", "1"], ["make", "test"]]


def test_cli_reference_matches_the_commands():
    script = DOCS / "scripts" / "cli_reference.py"
    result = patience.run([sys.executable, str(script), "--check"])
    assert result.returncode == 0, result.stdout + result.stderr


NOT_IN_THE_API_REFERENCE = {
    "textenv.cli": "the textenv command's skeleton: docs/cli.md documents the command itself",
    "textenv.data": "package data (the prompt set and demonstrations), no code",
    "textenv.agents.ppo": "PPO and TrainingError, documented where users import them: textenv.agents",
    "textenv.agents.ppo_config": "PPOConfig, documented where users import it: textenv.agents",
    "textenv.agents.sft_cli": "the textenv sft command: docs/cli.md documents it",
}
"""Modules without an API page, and why."""

PACKAGE_DIRS = {"textenv": ROOT / "textenv", "textenv.plugins": ROOT / "plugins", "textenv.agents": ROOT / "agents"}
"""Where each part of the installed ``textenv`` lives in the repository (pyproject's package-dir)."""


def test_every_module_has_an_api_page():
    """A new module or plugin gets a ``::: name`` line in docs/api/ (a package's page covers its modules)."""
    documented = {m for page in (DOCS / "api").glob("*.md")
                  for m in re.findall(r"^::: (\S+)", page.read_text(), flags=re.M)}
    missing = []
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.iterdir()):
            if path.name.startswith("_") or (path.is_dir() and not (path / "__init__.py").exists()):
                continue
            if path.suffix != ".py" and not path.is_dir():
                continue
            name = f"{package}.{path.stem}"
            if name in PACKAGE_DIRS or name in NOT_IN_THE_API_REFERENCE:
                continue
            covering = documented - set(PACKAGE_DIRS)  # a package's page covers its modules, but not the roots
            if name not in documented and not any(name.startswith(m + ".") for m in covering):
                missing.append(name)
    assert not missing, f"no API page documents {missing}: add a '::: NAME' line to a page in docs/api/ (and to nav)"
