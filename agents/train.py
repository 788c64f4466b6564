"""The main job: ``textenv train`` — evaluate, train with PPO, evaluate again, report.

Every :class:`~textenv.agents.PPOConfig` field is a flag, generated from the dataclass, and so are the
task options of :class:`TrainTask`; both take their defaults from the dataclasses. ``--config FILE``
gives any of them from a YAML or JSON file, and flags override the file.

``--resume`` continues a run exactly as its checkpoint records it (:mod:`textenv.agents.run_definition`), so
the defaults never replace what the run was started with; the flags of :data:`RESUME_APPLIES` may change it
(each change is said in one line), any other option given with another value is refused, naming the flag.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from textenv.agents import checkpoint as ckpt
from textenv.agents import run_dir
from textenv.agents.checkpoint import STATE_FILE, CheckpointError, DiskFullError
from textenv.agents.run_dir import RunDirError, RunLock
from textenv.cli import add_dataclass_arguments, read_config_file
from textenv.envs.task import DEFAULT_PROMPTS, DEFAULT_REWARD
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.models import DEFAULT_MODEL
from textenv.plugin_manager import hookimpl
from textenv.prompts import shortened

TRAIN_REWARD = DEFAULT_REWARD
"""The main job's reward, the env's default: the default sentiment paid out per token (its sum is the same
score), which the value head credits token by token, and a penalty for repeated phrases."""

ALIASES = {"learning_rate": ("--lr",), "init_kl_coef": ("--kl-coef",), "cliprange": ("--clip",)}
"""Short flags kept from before the flags were generated (the docs use ``--lr``)."""

RESUME_APPLIES = frozenset({
    "output_dir", "overwrite", "iterations", "eval_prompts",  # where the run writes and where it ends
    "device", "precision", "keep_cpu_memory", "progress",  # the hardware it runs on, the bar
    "checkpoint_every", "keep_checkpoints", "save_optimizer", "sample_every",  # what it writes
})
"""With ``--resume``, the options a flag may change (applied, and said in one line). Every other option
(the model, prompts, reward, max_new_tokens and every option of the algorithm, the seed included) defines
the run: a flag giving another value than the checkpoint's is refused, naming it, rather than silently
making the resumed run another one. ``precision`` is here although bf16 rounds differently from fp32:
moving a run to other hardware must stay possible."""

METADATA_KEY = "textenv train"
"""Where ``textenv train`` keeps its own options (iterations, eval_prompts) in the agent's checkpoint metadata."""


class UsageError(Exception):
    """A wrong option or path given to ``textenv train``; printed as one line, exit status 2."""


@dataclass(frozen=True, kw_only=True)
class TrainTask:
    """What ``textenv train`` trains, for how long and where it writes; the agent's options are PPOConfig's."""

    model: str = DEFAULT_MODEL
    """Local path, hub id, or smollm2-135m (SmolLM2-135M-Instruct)."""
    prompts: str = DEFAULT_PROMPTS
    """Prompt set name, .txt or .jsonl file."""
    reward: str = TRAIN_REWARD
    """Reward spec, e.g. 'sentiment + 0.5*length'; the default pays the sentiment out per token."""
    max_new_tokens: int = 32
    """Length limit of each completion, in tokens."""
    iterations: int = 12
    """PPO iterations of batch_size episodes (with --resume: the run's total, those done included)."""
    eval_prompts: int = 8
    """Prompts scored before and after training (0: none)."""
    output_dir: str = "runs/textenv"
    """The run directory (PPOConfig's run_dir): TensorBoard events, samples.jsonl, checkpoints/, reward_curve.png.
    A new run refuses one that holds another run's checkpoints (see --overwrite); with --resume, the run
    directory the checkpoint is in."""
    resume: str | None = None
    """A checkpoint directory, or a run directory (its newest complete checkpoint), to continue as recorded: its
    model, prompts, reward and options, in the run directory where the checkpoint is now. Only output, iteration,
    hardware, logging and checkpoint flags may change it; another value for any other option is refused, naming
    the flag. Newer checkpoints than the one resumed are set aside as NAME.abandoned."""

    def __post_init__(self) -> None:
        for name in ("model", "prompts", "reward", "output_dir"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.resume is not None and not isinstance(self.resume, str):
            raise ValueError(f"resume must be a path or None, got {self.resume!r}")
        for name, least in (("max_new_tokens", 1), ("iterations", 1), ("eval_prompts", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@hookimpl
def textenv_add_commands(subparsers):
    """Add ``textenv train``, its flags generated from :class:`TrainTask` and :class:`PPOConfig`."""
    from textenv.agents.ppo_config import PPOConfig

    p = subparsers.add_parser(
        "train",
        help="train a model with PPO in the env (the main job)",
        description="Evaluate, train with PPO, evaluate again. Every PPOConfig field is a flag, its default "
                    "PPOConfig's (the setting tuned on the main task); --config FILE gives any option from a YAML "
                    "or JSON file, and flags override it. Exit status: 0 done (or the person giving feedback "
                    "pressed q, after a checkpoint), 2 a wrong option or path, 130 interrupted (after a checkpoint), "
                    "1 anything else.",
        usage="textenv train [--model M] [--reward SPEC] [--config FILE] [options]  (--help lists them all)",
        allow_abbrev=False,  # a new field must not change what an abbreviation used to mean
    )
    task = add_dataclass_arguments(p, TrainTask, group="task")["task"]
    task.add_argument("--config", metavar="FILE",
                      help="a YAML or JSON file of these options (the names of the flags, with _ or -); flags "
                           "given here override it")
    # run_dir is the task's --output-dir: the CLI always writes a run directory.
    add_dataclass_arguments(p, PPOConfig, skip=("run_dir",), aliases=ALIASES)
    p.set_defaults(run=run_training)
    return [UsageError, CheckpointError, RunDirError]


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every task and PPO option the user gave: the ``--config`` file's, then the flags' over them.

    Raises:
        ConfigFileError: the file cannot be read or holds an unknown key.
    """
    from textenv.agents.ppo_config import PPOConfig

    names = {f.name for f in fields(TrainTask)} | {f.name for f in fields(PPOConfig)} - {"run_dir"}
    given = {k: v for k, v in vars(args).items() if k in names}
    if getattr(args, "config", None):
        hints = {**typing.get_type_hints(TrainTask), **typing.get_type_hints(PPOConfig)}
        hints.pop("run_dir")
        given = {**read_config_file(args.config, hints), **given}
    return given


def train_settings(args: argparse.Namespace) -> tuple[TrainTask, dict[str, Any]]:
    """The task and the PPO options the user gave: the ``--config`` file's, then the flags' over them.

    Returns:
        The task, and the PPO options given (PPOConfig fills in the rest; with ``--resume``, the checkpoint's).

    Raises:
        UsageError: a task option is wrong (the PPO options are checked when their config is built).
        ConfigFileError: the file cannot be read or holds an unknown key.
    """
    task_names = {f.name for f in fields(TrainTask)}
    given = given_settings(args)
    try:
        task = TrainTask(**{k: v for k, v in given.items() if k in task_names})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return task, {k: v for k, v in given.items() if k not in task_names}


def find_checkpoint(path: str | Path) -> tuple[Path, str | None]:
    """The checkpoint ``--resume PATH`` names: PATH itself if it is one (verified, no fallback), else the newest
    complete checkpoint of the run directory PATH (:func:`textenv.agents.checkpoint.latest`).

    Returns:
        The checkpoint, and one line saying which newer ones were damaged and skipped (None if none).

    Raises:
        UsageError: PATH does not exist, is a file, or holds no checkpoint.
        CheckpointError: PATH is a damaged checkpoint, or every checkpoint of the run is (naming the file).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--resume: {path}: no such directory")
    if not path.is_dir():
        raise UsageError(f"--resume: {path}: a file, not a checkpoint or run directory")
    if ckpt.is_checkpoint(path) or path.name.endswith((".tmp", ".old")):
        ckpt.verify(path)
        return path, None
    try:
        found, skipped = ckpt.latest(path)
    except FileNotFoundError as exc:
        raise UsageError(f"--resume: {exc}") from None
    note = None
    if skipped:
        note = (f"resume: skipped {len(skipped)} damaged checkpoint(s) ({'; '.join(skipped)}); resuming from the "
                f"newest complete one, {found.name}")
    return found, note


def resume_changes(given: dict[str, Any], state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare the options given with ``--resume`` to the checkpoint's run.

    Returns:
        The refused differences (flags outside :data:`RESUME_APPLIES`) and the applied ones, one phrase each.
    """
    from textenv.agents.run_definition import parsed_reward_terms, prompts_fingerprint
    from textenv.prompts import load_prompts

    run, config = state["run"], state["config"]
    recorded = {**config, **state.get("metadata", {}).get(METADATA_KEY, {}),
                "model": run["model"], "prompts": run["prompts"]["source"], "reward": run.get("reward"),
                "max_new_tokens": run["max_new_tokens"], "output_dir": config.get("run_dir")}
    refused, applied = [], []
    for name, value in given.items():
        if name == "resume":
            continue
        old = recorded.get(name)
        same = value == old
        if name == "model" and not same and run.get("model_path") and Path(value).expanduser().is_dir():
            same = str(Path(value).expanduser().resolve()) == run["model_path"]
        elif name == "reward" and not same:
            same = parsed_reward_terms(value) == run["reward_terms"]  # another spelling of the same spec
        elif name == "prompts" and same:
            items = load_prompts(value)
            if all(isinstance(item, str) for item in items) and prompts_fingerprint(items) != run["prompts"]["sha256"]:
                refused.append(f"--prompts {value}: its prompts changed since the run started (their sha256 "
                               "differs from the checkpoint's)")
                continue
        if name == "output_dir" and not same and old is not None:
            same = Path(value).resolve() == Path(old).resolve()
        if same:
            continue
        flag = "--" + name.replace("_", "-")
        if name in RESUME_APPLIES:
            applied.append(f"{flag} {value} (the run had {old})")
        else:
            refused.append(f"{flag} {value!r} differs from the run's {old!r}")
    return refused, applied


def check_output_dir(path: str | Path) -> None:
    """Make sure the run directory can be written, before anything is loaded.

    Raises:
        UsageError: it is a file, or it (or a parent) cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output-dir {path}: a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"--output-dir {path}: cannot write there ({exc.strerror or exc})") from None


def run_training(args: argparse.Namespace) -> int:
    """Run ``textenv train`` with parsed command-line arguments.

    Returns:
        The exit status: 0 done (or nothing left to do, or the person at the terminal stopped with q, after a
        checkpoint), 2 training stopped on an error, 130 interrupted (after a checkpoint), 1 the disk filled up
        while saving a checkpoint.

    Raises:
        UsageError: a wrong option or ``--resume`` path, a flag that would change a resumed run, or an output
            directory holding another run's checkpoints, before anything is loaded.
        CheckpointError: the checkpoint to resume is damaged (the file is named).
        RunDirError: the output directory is in use by another run.
    """
    from textenv.agents import PPO, PPOConfig, processes

    # Under accelerate launch every process runs this; the main one speaks for them.
    say = print if processes.is_main_process() else _silent
    if processes.unsupported_launch():
        raise UsageError(processes.unsupported_launch())
    task, options = train_settings(args)
    start = time.perf_counter()
    checkpoint = None
    if task.resume:
        checkpoint, state, task, options = _resume_settings(args, task, options, say)
        if task.iterations <= state["num_iterations"]:
            say(f"nothing to do: the run has done {state['num_iterations']} iterations and --iterations is "
                f"{task.iterations} (the run's total, those done included); give a larger --iterations to train on")
            return 0
    options["run_dir"] = task.output_dir
    _checked_config(PPOConfig, {**state["config"], **options} if checkpoint else options)
    check_output_dir(task.output_dir)
    with _run_directory(task.output_dir, checkpoint, options.get("overwrite", False)):
        if checkpoint:
            say(f"resuming from {checkpoint}", flush=True)
            agent = PPO.load(checkpoint, **options)
            reward = state["run"].get("reward") or "as recorded"
        else:
            env = TextGenVectorEnv(
                1, model=task.model, prompts=task.prompts, reward=task.reward, max_new_tokens=task.max_new_tokens
            )
            say(f"loading {task.model} ...", flush=True)
            agent = PPO(env, **options)
            reward = task.reward
        agent.resume_hint = f"textenv train --resume {task.output_dir}"
        agent.metadata[METADATA_KEY] = {"iterations": task.iterations, "eval_prompts": task.eval_prompts}
        n = agent.processes.num
        say(f"ready in {time.perf_counter() - start:.1f} s on {agent.device}{f' x {n} processes' if n > 1 else ''}"
            f"{' (bf16 autocast)' if agent.bf16 else ''}; reward = {reward}; iteration {agent.num_iterations} of "
            f"{task.iterations}", flush=True)
        return _train_and_report(agent, task, say, start)


def _resume_settings(
    args: argparse.Namespace, task: TrainTask, options: dict[str, Any], say: Any
) -> tuple[Path, dict[str, Any], TrainTask, dict[str, Any]]:
    """The checkpoint ``--resume`` names, its state, and the task and PPO options of the resumed run: the
    checkpoint's, with the flags of :data:`RESUME_APPLIES` that were given.

    Raises:
        UsageError: a flag would change the run, or the checkpoint lies outside any run directory and no
            ``--output-dir`` says where the resumed run writes.
        CheckpointError: the checkpoint is damaged.
    """
    from textenv.agents import PPOConfig

    checkpoint, note = find_checkpoint(task.resume)
    state = ckpt.read_json(checkpoint / STATE_FILE)
    if not isinstance(state, dict) or "run" not in state or "config" not in state:
        raise CheckpointError(f"{checkpoint / STATE_FILE}: holds no run definition and config")
    given = given_settings(args)
    refused, applied = resume_changes(given, state)
    if refused:
        may_change = ", ".join("--" + name.replace("_", "-") for name in sorted(RESUME_APPLIES))
        raise UsageError(
            f"--resume: {'; '.join(refused)}. A resumed run keeps its model, prompts, reward, max_new_tokens and "
            f"training options (only {may_change} may change); to train its weights otherwise, start a new run "
            f"with --model {checkpoint / 'model'}"
        )
    if note:
        say(note, flush=True)
    if applied:
        say(f"resume: applying {', '.join(applied)}", flush=True)
    output_dir = given.get("output_dir") or run_dir.run_of_checkpoint(checkpoint, state["config"].get("run_dir"))
    if output_dir is None:
        raise UsageError(f"--resume {checkpoint}: a checkpoint outside its run directory "
                         f"({state['config'].get('run_dir')}): give --output-dir for the resumed run")
    recorded = state.get("metadata", {}).get(METADATA_KEY, {})
    task = dataclasses.replace(task, **{
        name: given.get(name, recorded.get(name, getattr(task, name))) for name in ("iterations", "eval_prompts")
    }, output_dir=str(output_dir))
    options = {k: v for k, v in options.items() if k in RESUME_APPLIES}
    options.setdefault("device", PPOConfig.device)  # the machine's, not the one the checkpoint was written on
    return checkpoint, state, task, options


@contextlib.contextmanager
def _run_directory(path: str, resumed_from: Path | None, overwrite: bool) -> Iterator[None]:
    """Lock the run directory for this run (the main process writes it) and refuse another run's checkpoints in
    it unless ``overwrite``, before anything is loaded.

    Raises:
        RunDirError: another process holds the directory, or it holds another run's checkpoints (a resumed
            run's own are not another's).
    """
    from textenv.agents import processes

    if not processes.is_main_process():
        yield
        return
    with RunLock(path, name="--output-dir"):
        run_dir.check_claim(path, resumed_from=resumed_from, overwrite=overwrite, name="--output-dir",
                            hints=(f"--resume {path}", "--overwrite"))
        yield


def _train_and_report(agent: Any, task: TrainTask, say: Any, start: float) -> int:
    """Evaluate, train, evaluate again and print the report; returns the exit status."""
    from textenv.agents import TrainingError

    evaluated = task.eval_prompts if agent.processes.is_main else 0  # (the main process shows the samples)
    prompts = [agent.task.prompts[i % len(agent.task.prompts)] for i in range(evaluated)]
    before = agent.evaluate(prompts, seed=agent.config.seed) if prompts else None
    total = task.iterations * agent.config.batch_size
    try:
        agent.learn(total, reset_num_episodes=not task.resume)
    except TrainingError as error:  # its message says what went wrong and where the last good state is
        say(f"textenv: error: {error}", file=sys.stderr)
        return 2
    except DiskFullError as error:  # "no space left on DEVICE while saving PATH"; the older checkpoints load
        say(f"textenv: error: {error.strerror}", file=sys.stderr)
        return 1
    if agent.num_episodes < total:  # stopped early: learn() saved a checkpoint and said where, and how to resume
        if not agent.stopped_by:
            return 130  # a Ctrl-C
        _say_run(agent, task, say, start)  # the person at the terminal pressed q: the end of their run
        return 0
    after = agent.evaluate(prompts, seed=agent.config.seed) if prompts else None

    if before is not None:
        say("\nsamples (same prompts, same sampling seed):")
        for i in range(min(4, len(prompts))):
            say(f"  {shortened(prompts[i])}")
            say(f"    before [{before.rewards[i]:+.2f}] {before.completions[i].strip()[:120]!r}")
            say(f"    after  [{after.rewards[i]:+.2f}] {after.completions[i].strip()[:120]!r}")
        say(f"\nmean reward on {len(prompts)} prompts: before {np.mean(before.rewards):+.3f}, "
            f"after {np.mean(after.rewards):+.3f}")
    _say_run(agent, task, say, start)
    return 0


def _say_run(agent: Any, task: TrainTask, say: Any, start: float) -> None:
    """The end of the report: the training reward by iteration, the run directory, the time taken."""
    curve = [h["charts/episodic_return"] for h in agent.history]
    if curve:
        say(f"training reward by iteration: {' '.join(f'{r:+.2f}' for r in curve)}")
    say(f"run directory: {task.output_dir} (TensorBoard events, samples.jsonl, reward_curve.png, checkpoints/)")
    say(f"total time {time.perf_counter() - start:.0f} s")


def _silent(*args: Any, **kwargs: Any) -> None:
    """``print`` in a process that is not the main one."""


def _checked_config(config_class: type, options: dict[str, Any]) -> Any:
    """The config, or its one-line complaint as a UsageError (checked before the model is loaded)."""
    try:
        return config_class.from_options(options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
