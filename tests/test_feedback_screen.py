"""The session as a person meets it: lines that break between words, notes that never split the line being
streamed, and q, which ends a training run as the person's own stop (exit 0 after its checkpoint)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading

import numpy as np
import pytest
from patience import cpu_seconds, wait_for_exit, wait_until

from textenv.agents import learn_control
from textenv.models import TINY_MODEL
from textenv.plugins.human.credit import UniformDelay
from textenv.plugins.human.simulated import SimulatedHuman
from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.stream import (
    COMPLETION_END,
    COMPLETION_START,
    GOOD_MARK,
    HELP,
    Screen,
    StreamConfig,
    TokenFeedback,
    cells,
)
from textenv.plugins.human.terminal import KeyReader

_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
_ERASE_LINE = "\r\x1b[K"


def on_terminal(raw: str, width: int) -> list[str]:
    """The lines a terminal ``width`` columns wide shows for ``raw``: its own wrapping at the last column
    included, colours left out. It knows what the display writes: text, newlines (a pseudo-terminal's
    ``\\r\\n``), and "erase this line"."""
    lines: list[str] = [""]
    for i, chunk in enumerate(_COLOURS.sub("", raw).replace("\r\n", "\n").split(_ERASE_LINE)):
        if i:
            lines[-1] = ""  # the cursor went back to the start of the line and cleared it
        for ch in chunk:
            if ch == "\n":
                lines.append("")
                continue
            if cells(lines[-1]) + cells(ch) > width:  # the terminal wraps where the columns run out
                lines.append("")
            lines[-1] += ch
    return lines


def streamed(screen: Screen, text: str, cuts: list[int], start: int = 0, stop: int | None = None) -> None:
    """Write ``text[start:stop]`` as a stream does: piece by piece (cut at ``cuts``), each with the rest of the
    word it ends in."""
    bounds = [start, *cuts, len(text) if stop is None else stop]
    for a, b in zip(bounds[:-1], bounds[1:]):
        screen.text(text[a:b], ahead=re.match(r"\S*", text[b:]).group())


REVIEW = (" I expected very little from this movie, but the beauty of it is that it reminds us that even the most "
          "seemingly disparate worlds, with their own extraordinarily idiosyncratic inhabitants, share a language")


@pytest.mark.parametrize("width", [24, 37, 80])
def test_streamed_words_are_never_cut_and_lines_fit_the_terminal(width):
    rng = np.random.default_rng(width)
    for _ in range(20):  # tokens cut words anywhere: " beau" "ty"
        out = io.StringIO()
        screen = Screen(out, lambda: width)
        screen.text("[1/2] The film", style="\x1b[2m")
        screen.text(" ")
        screen.symbol(COMPLETION_START)
        streamed(screen, REVIEW, sorted(rng.choice(np.arange(1, len(REVIEW)), size=40, replace=False).tolist()))
        screen.symbol(COMPLETION_END)
        lines = on_terminal(out.getvalue(), width)
        assert all(cells(line) < width for line in lines)  # no line reached the last column: none was wrapped
        shown = " ".join(lines).replace(f" {COMPLETION_END}", COMPLETION_END)  # (◂ goes on when a line is full)
        assert shown == f"[1/2] The film {COMPLETION_START}{REVIEW}{COMPLETION_END}"  # each break stands for a blank
        assert max(map(cells, lines)) > width - 12  # and lines are filled, not broken early


def test_a_word_wider_than_a_line_is_cut_where_the_line_ends_and_wide_characters_take_two_columns():
    out = io.StringIO()
    screen = Screen(out, lambda: 21)
    streamed(screen, "ok " + "x" * 45 + " 映画映画映画映画映画映画 end", [5, 20, 30])
    lines = on_terminal(out.getvalue(), 21)
    assert lines == ["ok", "x" * 20, "x" * 20, "x" * 5, "映画映画映画映画映画", "映画 end"]


def test_a_note_in_the_middle_of_a_line_comes_on_its_own_line_and_the_line_is_written_again_below_it():
    out = io.StringIO()
    screen = Screen(out, lambda: 40)
    text = " the beauty of it is that it reminds us that even the most disparate"
    middle = text.index("ven")  # in the middle of the second line: " the beauty ... reminds us" / "that e|ven"
    streamed(screen, text, [7, 20, 33], stop=middle)
    screen.paragraph(f"({HELP})", indent="  ", hang="   ")
    streamed(screen, text, [middle + 3], start=middle)
    lines = on_terminal(out.getvalue(), 40)
    assert lines[1:4] == ["  (keys: ↑ + g good · ↓ - b bad · 1-9", "   strength (5 normal) · space pause ·",
                          "   q quit · ? help)"]
    # the stream's lines, read without the note, are the text: no line, and no word, split by it
    assert [lines[0], *lines[4:]] == [" the beauty of it is that it reminds us", "that even the most disparate"]
    assert all(cells(line) < 40 for line in lines)


def _set_width(fd: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))


def test_help_and_hints_typed_while_tokens_stream_never_split_the_line_being_read(tmp_path):
    """A person pauses mid-completion, presses x and ?, goes on, then quits: what their terminal shows."""
    master, slave = pty.openpty()
    _set_width(slave, 60)
    raw: list[bytes] = []
    done = threading.Event()

    def read_screen() -> None:  # the person's terminal: everything the session writes
        while not done.is_set():
            try:
                raw.append(os.read(master, 4096))
            except OSError:
                return

    def seen() -> str:
        return b"".join(raw).decode(errors="replace")

    reader_thread = threading.Thread(target=read_screen, daemon=True)
    reader_thread.start()
    text = " a fine film and a tedious plot, but wonderfully acted" * 40  # ~2,200 one-character tokens

    def person() -> None:
        def wait_for(what: str, count: int = 1) -> None:
            wait_until(lambda: seen().count(what) >= count, what=repr(what), progress=[lambda: len(seen())])

        wait_for(COMPLETION_START)
        wait_until(lambda: len(seen().split(COMPLETION_START)[-1]) > 70, what="the stream's second line",
                   progress=[lambda: len(seen())])
        os.write(master, b" ")  # pause: now, mid-line
        wait_for("paused: space to go on")
        os.write(master, b"gx?")  # a press, an unknown key (a hint: at the end), help (now)
        wait_for("keys: ↑ + g good", 2)
        os.write(master, b" ")
        wait_until(lambda: len(seen().split("? help)")[-1]) > 150, what="more of the stream",
                   progress=[lambda: len(seen())])
        os.write(master, b"q")

    config = StreamConfig(pace=200, delay=UniformDelay(min_delay=0.01, max_delay=0.3), gap=0.01, linger=0.01)
    with FeedbackStore(tmp_path / "f.db") as store, KeyReader(tty_path=os.ttyname(slave)) as keys:
        feedback = TokenFeedback(store, store.start_session("tokens"), config=config, reader=keys)
        threading.Thread(target=person, daemon=True).start()
        result = feedback.stream(["The film"], [text], [[ord(c) for c in text]], [list(text)], title="── batch 1 ──")
        feedback.out.close()
    wait_until(lambda: "credited to" in seen(), what="the summary", progress=[lambda: len(seen())])
    done.set()
    os.close(slave)
    os.close(master)
    assert result.shown == [0] and len(result.presses) == 1
    lines = on_terminal(seen(), 60)
    assert all(cells(line) < 60 for line in lines)
    start = next(i for i, line in enumerate(lines) if COMPLETION_START in line)
    end = next(i for i, line in enumerate(lines) if COMPLETION_END in line)
    notes = [i for i in range(start, end + 1) if lines[i].startswith("  (")]
    assert [lines[i][:12] for i in notes] == ["  (paused: s", "  (keys: ↑ +"]  # at once, each on its own line
    stream = [lines[i] for i in range(start, end + 1) if i not in notes and not lines[i].startswith("   ")]
    shown = " ".join(stream).split(COMPLETION_START, 1)[1].split(COMPLETION_END)[0].replace(GOOD_MARK, "")
    assert text.startswith(shown)  # read without the notes: the text, no line and no word split by them
    assert end > notes[-1] + 3  # (the help's two lines, the line written again, then the stream went on)
    # the unknown key's hint waited for the end of the completion
    assert lines[end + 1] == "  (key 'x' does nothing here; press ? for help)"


def _spawn_training(tmp_path, slave, log, *extra):
    reward = f"human(db='{tmp_path / 'feedback.db'}', pace=200, min_delay=0.01, max_delay=0.2, gap=0.01, linger=0.05)"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEXTENV_DISABLE_PLUGIN_AUTOLOAD": "1"}
    args = ["train", "--model", TINY_MODEL, "--prompts", "movie-reviews", "--reward", reward, "--batch-size", "4",
            "--mini-batch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "12", "--group-size", "2",
            "--eval-prompts", "0", "--iterations", "50", "--output-dir", str(tmp_path / "run"), *extra]
    return subprocess.Popen([sys.executable, "-m", "textenv.cli", *args], stdin=slave, stdout=slave, stderr=log,
                            env=env, close_fds=True)


def test_q_in_training_is_the_persons_stop_it_saves_says_how_to_resume_and_exits_0(tmp_path):
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        child = _spawn_training(tmp_path, slave, log)
    os.close(slave)
    try:
        with SimulatedHuman(master_fd=master, judge=False) as person:
            wait_until(lambda: COMPLETION_START in "".join(person.screen) or child.poll() is not None,
                       what="the first streamed completion", progress=[lambda: cpu_seconds(child.pid)])
            person.type("q")
            assert wait_for_exit(child, progress=[lambda: len(person.screen)]) == 0, \
                (tmp_path / "stderr.txt").read_text()[-2000:]
            screen = "".join(person.screen)
    finally:
        child.kill()
        os.close(master)
    assert "Ctrl-C:" not in screen and "interrupted" not in screen  # (not "Ctrl-C: finishing this iteration")
    assert "you pressed q: finishing this iteration, then saving a checkpoint" in screen
    found = re.search(r"you pressed q: training stopped after iteration (\d+); checkpoint written to (\S+); "
                      r"resume with: textenv train --resume (\S+)", screen.replace("\n", " "))
    assert found, screen[-1500:]
    iteration, checkpoint, run = int(found.group(1)), found.group(2), found.group(3)
    assert 1 <= iteration < 50 and run == str(tmp_path / "run")
    assert checkpoint == str(tmp_path / "run" / "checkpoints" / f"iter_{iteration:06d}")
    assert (tmp_path / "run" / "checkpoints" / f"iter_{iteration:06d}" / "trainer_state.json").exists()
    assert "run directory:" in screen


def test_a_persons_stop_is_theirs_and_a_ctrl_c_after_it_aborts(capsys):
    with learn_control.graceful_interrupt() as state:
        handler = signal.getsignal(signal.SIGINT)
        handler.request_stop("you pressed q")
        assert state.requested and state.stopped_by == "you pressed q"
        assert state.report(3) == ("you pressed q: training stopped after iteration 3", "checkpoint written to")
        with pytest.raises(KeyboardInterrupt):  # the person is in a hurry: a Ctrl-C now stops at once
            signal.raise_signal(signal.SIGINT)
    assert "you pressed q: finishing this iteration, then saving a checkpoint" in capsys.readouterr().out
    with learn_control.graceful_interrupt() as state:
        signal.raise_signal(signal.SIGINT)
        signal.getsignal(signal.SIGINT).request_stop("you pressed q")  # a Ctrl-C came first: that stop stands
        assert state.stopped_by is None and state.report(2) == ("interrupted after iteration 2", "checkpoint in")
    assert "Ctrl-C: finishing this iteration" in capsys.readouterr().out
