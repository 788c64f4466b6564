"""Key reading at a terminal: names, no blocking, a clear error off a terminal, the terminal restored."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time

import pytest
from patience import STALL, run, wait_for_exit, wait_until

from textenv import cli
from textenv.models import TINY_MODEL
from textenv.plugins.human.episodes import rate_completions
from textenv.plugins.human.simulated import SimulatedHuman
from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.terminal import KeyReader, TerminalError, check_terminal, split_keys


@pytest.fixture
def pty_pair():
    master, slave = pty.openpty()
    yield master, slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def _wait_keys(reader, n):
    keys = []

    def arrived():
        keys.extend(reader.drain())
        return len(keys) >= n

    wait_until(arrived, what=f"{n} keys", progress=[lambda: len(keys)], poll=0.01)
    return keys


def test_keys_are_named_as_people_know_them():
    names = ["g", "up", "down", "+", "-", "3", "space", "q", "?", "enter", "esc"]
    assert split_keys(b"g\x1b[A\x1bOB+-3 q?\r\x1b") == names
    assert split_keys(b"\x1b[15~x") == ["unknown-escape", "x"]  # F5 is skipped whole
    assert split_keys(b"\x03") == ["0x03"]


def test_a_pipe_is_refused_at_once_with_a_clear_error():
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"g")
        with pytest.raises(TerminalError, match="not a terminal"):
            KeyReader(read_end)
        assert os.read(read_end, 1) == b"g"  # refused before reading (or waiting for) anything
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_cli_refuses_a_piped_stdin_before_loading_a_model(tmp_path, capsys, monkeypatch):
    read_end, write_end = os.pipe()
    os.close(write_end)
    monkeypatch.setattr(sys, "stdin", os.fdopen(read_end))
    # A model that is not there: had it been loaded first, its error would be the one printed.
    rc = cli.main(["feedback", "label", "--db", str(tmp_path / "f.db"), "--model", str(tmp_path / "no-model")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("textenv: error: stdin is not a terminal") and "interactive terminal" in err


_REFUSE_AND_REPORT = textwrap.dedent("""
    import json, sys
    from textenv import cli
    rc = cli.main()  # as the textenv program runs it
    print(json.dumps({"rc": rc, "model libraries": [m for m in ("transformers", "datasets") if m in sys.modules],
                      "plugins and agents": sorted(m for m in sys.modules
                                                   if m.startswith(("textenv.plugins", "textenv.agents")))}))
""")


@pytest.mark.parametrize("argv, error", [
    (["train", "--reward", "sentiment + human(db='{db}')"], "reward source 'human': stdin is not a terminal"),
    (["feedback", "label", "--mode", "rate", "--db", "{db}"], "stdin is not a terminal"),
])
def test_a_stdin_that_is_no_terminal_is_refused_before_any_plugin_or_model_library_is_imported(tmp_path, argv, error):
    """Told in seconds, not after the plugins have imported transformers and datasets (~3,700 modules, a minute
    on a cold start); torch itself comes with ``import textenv``, whose core modules import it."""
    db = tmp_path / "feedback.db"
    env = {**os.environ, "TEXTENV_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = run([sys.executable, "-c", _REFUSE_AND_REPORT, *(arg.format(db=db) for arg in argv)],
                 stdin=subprocess.DEVNULL, env=env)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"rc": 2, "model libraries": [], "plugins and agents": []}, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"textenv: error: {error}: live feedback reads keypresses") and not db.exists()


def test_the_early_refusal_says_what_the_plugin_says_and_leaves_what_the_command_line_cannot_tell(monkeypatch):
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdin", os.fdopen(read_end))
    try:
        with pytest.raises(TerminalError) as plugins:
            check_terminal()
        assert cli.without_a_terminal(["feedback", "label", "--mode", "tokens"]) == str(plugins.value)
        assert cli.without_a_terminal(["-p", "no:sentiment", "train", "--reward=length + 2*human(pace=6)"]) == \
            f"reward source 'human': {plugins.value}"
        for argv in (["train", "--reward", "human(tty='/dev/pts/9')"],  # its own terminal: the source checks it
                     ["train", "--reward", "sentiment"], ["train", "--reward", "human(("],  # (said where it is read)
                     ["feedback", "label", "--help"], ["feedback", "export", "--db", "f.db", "--output", "p.jsonl"],
                     ["-p", "no:human", "train", "--reward", "human"]):  # another plugin's source may take the name
            assert cli.without_a_terminal(argv, disabled=["human"] if "no:human" in argv else []) is None, argv
    finally:
        sys.stdin.close()
        os.close(write_end)


def test_keys_arrive_timestamped_while_the_main_thread_works_and_the_terminal_is_restored(pty_pair):
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    seen = []
    with KeyReader(slave, on_key=seen.append) as reader:
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ECHO and not during[3] & termios.ICANON  # cbreak: keys one by one
        assert during[3] & termios.ISIG  # Ctrl-C still interrupts
        typed_at = time.time()
        os.write(master, b"g\x1b[Ab")
        # the main thread computes (no sleep) while the reader thread takes the keys
        wait_until(lambda: sum(range(1000)) and len(seen) == 3, what="the reader thread to take the keys",
                   progress=[lambda: len(seen)], poll=0)
        drained_at = time.time()
        keys = _wait_keys(reader, 3)
    assert [k.name for k in keys] == ["g", "up", "b"] == [k.name for k in seen]
    assert all(typed_at <= k.at <= drained_at for k in keys)  # stamped on arrival, not when drained
    assert termios.tcgetattr(slave) == before


def test_the_terminal_is_restored_after_an_exception(pty_pair):
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError, match="boom"), KeyReader(slave):
        raise RuntimeError("boom")
    assert termios.tcgetattr(slave) == before


def test_the_terminal_is_restored_on_sigterm(pty_pair):
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    script = textwrap.dedent("""
        import sys, time
        from textenv.plugins.human.terminal import KeyReader
        with KeyReader():
            print("ready", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=slave, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"
        assert termios.tcgetattr(slave) != before  # cbreak while it runs
        child.send_signal(signal.SIGTERM)
        assert wait_for_exit(child) == 128 + signal.SIGTERM
    finally:
        child.kill()
    assert termios.tcgetattr(slave) == before


def test_a_closed_terminal_ends_the_reading(pty_pair):
    master, slave = pty_pair
    with KeyReader(slave) as reader:
        os.close(master)
        assert reader.hung_up.wait(STALL)
        assert [k.name for k in reader.drain()][-1] == "hangup"


def test_training_with_human_feedback_refuses_a_stdin_that_is_not_a_terminal_before_loading_the_model(tmp_path):
    db = tmp_path / "feedback.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEXTENV_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = run(
        [sys.executable, "-m", "textenv.cli", "train", "--model", TINY_MODEL, "--reward", f"human(db='{db}')",
         "--iterations", "1", "--batch-size", "4", "--mini-batch-size", "4", "--max-new-tokens", "8",
         "--eval-prompts", "2", "--output-dir", str(tmp_path / "run")],
        stdin=subprocess.DEVNULL, env=env,
    )
    assert result.returncode == 2, result.stderr
    # "loading MODEL ..." is printed just before the model loads, and the rollouts come after it
    assert "loading" not in result.stdout and "ready in" not in result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("textenv: error: reward source 'human': stdin is not a terminal")
    assert "on completion" not in line and not db.exists()


def test_each_press_is_marked_in_the_stream_and_the_batch_is_summarized(tmp_path):
    from textenv.plugins.human.credit import UniformDelay
    from textenv.plugins.human.simulated import SimulatedHuman
    from textenv.plugins.human.store import FeedbackStore
    from textenv.plugins.human.stream import BAD_MARK, GOOD_MARK, StreamConfig, TokenFeedback

    texts = [" a fine film" * 6, " a dull film" * 6]  # 72 tokens each, 0.72 s at 100 tokens/s
    config = StreamConfig(pace=100, delay=UniformDelay(min_delay=0.01, max_delay=0.3), gap=0.1, linger=0.3)
    with SimulatedHuman(judge=False) as person, FeedbackStore(tmp_path / "f.db") as store, \
            KeyReader(tty_path=person.tty_path) as reader:
        feedback = TokenFeedback(store, store.start_session("tokens"), config=config, reader=reader)
        start = time.time()
        # good, strength 7, good (↑), bad on the second completion
        for key, at in [("g", 0.3), ("7", 0.4), ("\x1b[A", 0.5), ("b", 1.2)]:
            person.type(key, at=start + at)
        result = feedback.stream(["The film"] * 2, texts, [[ord(c) for c in t] for t in texts],
                                 [list(t) for t in texts])
        wait_until(lambda: "credited to" in "".join(person.screen), what="the batch's summary on screen",
                   progress=[lambda: len(person.screen)])  # read by the person's own thread
        screen = "".join(person.screen)
    assert len(result.presses) == 3
    first, second = screen.split("[2/2]")
    # each press is confirmed where the stream was when it came, inside the completion it was about
    assert first.count(GOOD_MARK) == 2 and second.count(BAD_MARK) == 1 + 1  # and once more in the summary
    assert first.index("▸") < first.index(GOOD_MARK) < first.index("◂")
    # the hint waits for the end of the completion: the completion reads whole (a line break only for a blank)
    assert first.index("◂") < first.index("(strength 7)")
    assert first[first.index("▸") + 1:first.index("◂")].replace(GOOD_MARK, "").replace("\n", " ") == texts[0]
    assert second.index("▸") < second.index(BAD_MARK) < second.index("◂")
    credited = sum(int((m > 0).sum()) for m in result.masses)
    assert f"3 presses (2 {GOOD_MARK} good, 1 {BAD_MARK} bad) credited to {credited} tokens of 2 completions" in screen


def test_human_feedback_under_a_launch_of_several_processes_is_refused_in_one_line(monkeypatch, capsys, pty_pair):
    _, slave = pty_pair  # a real terminal: the refusal is about the processes, not the terminal
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate launch --num_processes 2 sets it in each process
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    tty = os.ttyname(slave)
    assert cli.main(["train", "--model", TINY_MODEL, "--reward", f"human(tty='{tty}')"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "reward source 'human' talks to one person at one terminal" in line and "started 2 (WORLD_SIZE)" in line


def test_a_person_rating_sees_a_megabyte_prompt_shortened_with_its_length(tmp_path):
    huge = "x" * 1_000_000
    with SimulatedHuman(judge=False) as person, FeedbackStore(tmp_path / "f.db") as store, \
            KeyReader(tty_path=person.tty_path) as reader:
        session = store.start_session("rate")

        def answer():
            wait_until(lambda: "[1/" in "".join(person.screen), what="the question", poll=0.01,
                       progress=[lambda: len(person.screen)])
            time.sleep(0.05)
            person.type("4")

        threading.Thread(target=answer, daemon=True).start()
        assert rate_completions(store, session, reader, [huge], [" fine"], [[1]], [[" fine"]]) == (1, False)
        screen = "".join(person.screen)
        assert store.ratings()[0]["prompt"] == huge  # the store keeps it whole
    assert "... (1,000,000 characters)" in screen and len(screen) < 5_000


def test_the_live_sources_of_one_store_can_be_closed_before_exit(tmp_path):
    from textenv.plugins.human.live import HumanOptions, close_human_sources, human_source

    with SimulatedHuman(judge=False) as person:
        first = human_source(HumanOptions(db=str(tmp_path / "a.db"), tty=person.tty_path))
        second = human_source(HumanOptions(db=str(tmp_path / "b.db"), tty=person.tty_path))
        try:
            assert close_human_sources(tmp_path / "a.db") == 1
            with FeedbackStore(tmp_path / "a.db") as store:  # the session is marked ended: closed, not at exit
                assert all(s["ended_at"] is not None for s in store._rows("SELECT ended_at FROM sessions"))
            assert human_source(HumanOptions(db=str(tmp_path / "b.db"), tty=person.tty_path)) is second
            reopened = human_source(HumanOptions(db=str(tmp_path / "a.db"), tty=person.tty_path))
            assert reopened is not first  # the same options open a fresh source
        finally:
            assert close_human_sources() == 2
