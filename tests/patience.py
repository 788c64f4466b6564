"""Waiting on a child process or a thread for as long as it makes progress.

A fixed wait (``child.wait(timeout=60)``) turns a busy machine red: under load the same work takes minutes. These
helpers wait instead while the thing waited on shows signs of life (its CPU time, its output, rows in a database,
text on a screen) and give up only after ``STALL`` seconds without any, or ``CAP`` seconds in all. A stuck child
still fails the test, with its output; a slow one only makes it slow.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil  # accelerate's dependency, so always installed with textenv

STALL = 300.0  # seconds with no sign of progress at all: the child is stuck, not slow
CAP = 1800.0  # seconds in all: a child that keeps busy without ever finishing


def cpu_seconds(pid: int) -> float | None:
    """The CPU time of a process and its descendants (``accelerate launch`` works through its children).

    Returns:
        Their user and system seconds, or None once the process is gone.
    """
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:  # a child that exited between the listing and the reading
                continue
            total += times.user + times.system
        return total
    except psutil.Error:
        return None


def wait_until(done: Callable[[], bool], *, what: str, progress: Iterable[Callable[[], Any]] = (),
               stall: float = STALL, cap: float = CAP, poll: float = 0.05) -> None:
    """Poll ``done()`` until it is true, for as long as some sign of progress keeps changing.

    Args:
        done: the condition waited for.
        what: what is waited for, for the error.
        progress: callables whose values change while the work goes on (a count of rows, the length of an
            output); any change restarts the ``stall`` clock.
        stall: seconds without a change in ``progress`` after which the wait fails.
        cap: seconds after which the wait fails however busy the work is.
        poll: seconds between checks.

    Raises:
        AssertionError: naming ``what``, when the work stalls or runs past ``cap``.
    """
    progress = list(progress)
    start = last_change = last_look = time.monotonic()
    seen = [sign() for sign in progress]
    while not done():
        now = time.monotonic()
        if now - last_look >= 1.0:  # the signs cost more than done() (a walk of the process table): once a second
            signs, last_look = [sign() for sign in progress], now
            if signs != seen:
                seen, last_change = signs, now
        if now - last_change > stall:
            raise AssertionError(f"waiting for {what}: no progress in {stall:.0f} s")
        if now - start > cap:
            raise AssertionError(f"waiting for {what}: not done after {cap:.0f} s")
        time.sleep(poll)


def wait_for_exit(child: subprocess.Popen, *, what: str = "the child process to exit",
                  progress: Iterable[Callable[[], Any]] = (), stall: float = STALL, cap: float = CAP) -> int:
    """``child.wait()`` for as long as the child (or any process it started) uses CPU or ``progress`` changes.

    Returns:
        The child's exit code.

    Raises:
        AssertionError: when it stalls or runs past ``cap`` (the child is then killed).
    """
    try:
        wait_until(lambda: child.poll() is not None, what=what, progress=[lambda: cpu_seconds(child.pid), *progress],
                   stall=stall, cap=cap, poll=0.1)
    except AssertionError:
        kill_tree(child)
        raise
    return child.returncode


def communicate(child: subprocess.Popen, *, what: str = "the child process to exit", stall: float = STALL,
                cap: float = CAP) -> tuple[Any, Any]:
    """``child.communicate()`` (reading its pipes) for as long as the child uses CPU or writes output.

    Returns:
        Its stdout and stderr, as ``communicate`` returns them.

    Raises:
        AssertionError: when it stalls or runs past ``cap`` (the child is then killed), with its output so far.
    """
    partial: list[Any] = [None, None]

    def finished() -> bool:
        try:
            partial[:] = child.communicate(timeout=0.1)
            return True
        except subprocess.TimeoutExpired as e:  # retrying loses no output (the subprocess docs)
            partial[:] = [e.stdout, e.stderr]
            return False

    try:
        output = [lambda: cpu_seconds(child.pid), lambda: [len(p or "") for p in partial]]
        wait_until(finished, what=what, progress=output, stall=stall, cap=cap, poll=0)
    except AssertionError as e:
        kill_tree(child)
        tails = "".join(f"\n--- {name}\n{str(p)[-3000:]}" for name, p in zip(["stdout", "stderr"], partial))
        raise AssertionError(f"{e}{tails}") from None
    return partial[0], partial[1]


def run(argv: list[str], *, what: str | None = None, stall: float = STALL, cap: float = CAP,
        **popen: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True, ...)``, waiting while the child works.

    The output goes to temporary files, so that its growth counts as progress without a reader thread.

    Args:
        argv: the command line.
        what: what is waited for, for the error (the command line by default).
        stall: seconds with no CPU time and no output after which the child is killed and the test fails.
        cap: seconds after which it is killed however busy it is.
        **popen: passed to ``subprocess.Popen`` (``env``, ``cwd``, ``stdin``).

    Returns:
        The finished process with its text ``stdout`` and ``stderr``.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, stdout=out, stderr=err, text=True, **popen)

        def output() -> tuple[int, int]:
            return os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size

        try:
            wait_for_exit(child, what=what or " ".join(map(str, argv)), progress=[output], stall=stall, cap=cap)
        except AssertionError as e:
            out.seek(0)
            err.seek(0)
            raise AssertionError(f"{e}\n--- stdout\n{out.read()[-3000:]}\n--- stderr\n{err.read()[-3000:]}") from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, child.returncode, out.read(), err.read())


def kill_tree(child: subprocess.Popen) -> None:
    """SIGKILL a child and every process it started, and reap it."""
    try:
        for process in psutil.Process(child.pid).children(recursive=True):
            process.kill()
    except psutil.Error:
        pass
    child.kill()
    child.wait()
