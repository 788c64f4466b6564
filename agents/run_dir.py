"""A run directory: which run's checkpoints it holds, who is writing into it, and what a run may delete there.

A run writes into its directory only what it made: TensorBoard events, ``samples.jsonl``, ``reward_curve.png``
and ``checkpoints/``. A new run refuses a directory that holds another run's checkpoints (pruning would rank them
with its own, and a later resume would continue the wrong run) unless told to overwrite, and then deletes only
those files of ours. One process at a time writes into a directory (:class:`RunLock`). A resume of an older
checkpoint sets the newer ones aside instead of letting "latest" and pruning prefer the abandoned future.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from textenv.agents import checkpoint

CHECKPOINTS = "checkpoints"
LOCK_FILE = ".textenv-run.lock"
"""The lock file in a run directory: locked (``flock``) by the process writing the run, which writes its pid into
it. The kernel drops the lock when that process dies, so a killed run leaves no stale lock behind."""
RUN_FILES = ("samples.jsonl", "reward_curve.png")
"""A run's own files beside its ``events.out.tfevents.*`` and ``checkpoints/``."""
ABANDONED = ".abandoned"
"""The suffix of a checkpoint set aside by a resume of an older one (never loaded: not an ``iter_NNNNNN`` name)."""


class RunDirError(ValueError):
    """A run directory that this run may not write into: one line naming it and what to do."""


def checkpoints_of(run_dir: str | Path) -> list[Path]:
    """The checkpoints a run left in ``run_dir``: ``checkpoints/iter_NNNNNN`` and ``checkpoints/last-good``."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and (checkpoint.iteration_of(p) is not None or p.name == checkpoint.LAST_GOOD))


def last_iteration(checkpoints: list[Path]) -> int:
    """The highest iteration among ``checkpoints`` (``last-good`` by its recorded one; 0 when unreadable)."""
    found = [0]
    for path in checkpoints:
        number = checkpoint.iteration_of(path)
        if number is None:
            try:
                number = int(checkpoint.read_json(path / checkpoint.STATE_FILE)["num_iterations"])
            except (checkpoint.CheckpointError, KeyError, TypeError, ValueError):
                number = 0
        found.append(number)
    return max(found)


def run_of_checkpoint(path: str | Path, recorded_run_dir: str | None) -> Path | None:
    """The run directory a checkpoint belongs to where it lies now: ``R`` for ``R/checkpoints/NAME`` (the run was
    copied or moved, or not), the recorded run directory when the checkpoint lies inside it (``agent.save(run_dir /
    "final")``), else None (a checkpoint copied out of its run)."""
    path = Path(path)
    if path.parent.name == CHECKPOINTS:
        return path.parent.parent
    if recorded_run_dir and path.resolve().is_relative_to(Path(recorded_run_dir).resolve()):
        return Path(recorded_run_dir)
    return None


def check_claim(run_dir: str | Path, *, resumed_from: Path | None, overwrite: bool, name: str,
                hints: tuple[str, str]) -> bool:
    """Whether a run may write into ``run_dir``: a resumed run into its own directory, any run into one without
    checkpoints, and a new one (or one resumed elsewhere) into another run's only with ``overwrite``.

    Args:
        run_dir: the run directory.
        resumed_from: the checkpoint a resumed run continues from, else None.
        overwrite: the user said that another run's files there may go.
        name: how the message names the directory (``--output-dir`` on the command line).
        hints: how the message names the ways to continue that other run and to replace it (``("--resume DIR",
            "--overwrite")`` on the command line).

    Returns:
        Whether ``run_dir`` is the resumed run's own directory.

    Raises:
        RunDirError: it holds another run's checkpoints and ``overwrite`` is False.
    """
    own = resumed_from is not None and Path(resumed_from).resolve().is_relative_to(Path(run_dir).resolve())
    others = checkpoints_of(run_dir)
    if others and not own and not overwrite:
        raise RunDirError(f"{name} {run_dir}: holds the checkpoints of another run (up to iteration "
                          f"{last_iteration(others)}): {hints[0]} continues it, {hints[1]} replaces it (its "
                          f"checkpoints, events, samples and reward curve are deleted first), or give another {name}")
    return own


def remove_run_files(run_dir: str | Path) -> None:
    """Delete a run's own files from ``run_dir`` (checkpoints, events, samples, reward curve), nothing else."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    for path in [*run_dir.glob("events.out.tfevents.*"), *(run_dir / name for name in RUN_FILES)]:
        if path.is_file():
            path.unlink()


def set_aside_newer(run_dir: str | Path, iteration: int, keep: Path) -> list[str]:
    """Rename the checkpoints of ``run_dir`` past ``iteration`` (but ``keep``, the one resumed) to
    ``NAME.abandoned``: a resume of an older checkpoint abandons them, so "latest" and pruning must not see them.

    Returns:
        The names set aside, oldest first.
    """
    newer = [p for p in checkpoints_of(run_dir)
             if p.resolve() != Path(keep).resolve() and last_iteration([p]) > iteration]
    moved = []
    for path in sorted(newer, key=lambda p: last_iteration([p])):
        target = path.with_name(path.name + ABANDONED)
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}{ABANDONED}-{n}")
        os.rename(path, target)
        moved.append(path.name)
    return moved


def prune(folder: Path, keep: int) -> None:
    """Keep the ``keep`` highest ``iter_NNNNNN`` checkpoints of ``folder`` and remove writes cut short."""
    checkpoint.remove_leftovers(folder)
    periodic = sorted(p for p in folder.iterdir() if checkpoint.iteration_of(p) is not None)
    for old in periodic[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


class RunLock:
    """The one-writer lock of a run directory, re-entrant within a process.

    ``fcntl.flock`` on :data:`LOCK_FILE`, with the holder's pid, host and start time written into the file for
    the message another run gets. Written here rather than with ``filelock``: its 3.x releases truncate the lock
    file when a contender opens it, which would erase the holder's pid that the message names. Where ``fcntl``
    is missing (Windows) the directory is not locked.

    Example::

        with RunLock("runs/demo"):
            ...  # only this process writes into runs/demo
    """

    _held: dict[str, list] = {}  # lock file's real path -> [file descriptor, count]: one flock per process

    def __init__(self, run_dir: str | Path, name: str = "run_dir"):
        """Args:
            run_dir: the run directory (created if missing).
            name: how messages name it (``--output-dir`` on the command line).
        """
        self.run_dir, self.name = Path(run_dir), name
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock.

        Raises:
            RunDirError: another process holds it ("in use by another run (process PID on HOST since TIME)").
        """
        try:
            import fcntl
        except ImportError:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.run_dir / LOCK_FILE)
        if key in self._held:
            self._held[key][1] += 1
            self.held = True
            return self
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(f"{self.name} {self.run_dir}: in use by another run ({holder}); wait for it to end, "
                              f"or give another {self.name}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._held[key] = [fd, 1]
        self.held = True
        return self

    def release(self) -> None:
        """Give the lock back (the file stays: removing it could let two contenders lock two files)."""
        if not self.held:
            return
        self.held = False
        key = os.path.realpath(self.run_dir / LOCK_FILE)
        entry = self._held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[key]
            os.close(entry[0])  # closing the descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """'process PID on HOST since TIME' from a held lock file, or what can be said without it."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {holder['pid']} on {holder['host']} since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"
