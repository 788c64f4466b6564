"""SIGKILL ``textenv train`` at random moments, resume it after every kill, and check it ends as an unbroken run.

A run of the tiny model (``checkpoint_every=1``, a normalized reward term, so every kind of state a checkpoint
holds moves each iteration) is killed with SIGKILL over and over. Each kill's moment is drawn (seeded) from
three kinds, so that writes are hit often, not by luck:

* ``random``: at a uniform moment within two iterations' time after the process is ready;
* ``writing``: while a checkpoint is being written: once ``iter_NNNNNN.tmp`` appears, after a uniform delay
  within the time a write takes (measured in the unbroken run);
* ``renamed``: just after a new checkpoint is renamed into place (the parent's fsync, pruning the old ones).

After each kill the run is resumed with ``--resume RUN_DIR``. A kill is survived when that resume loads the
newest complete checkpoint there (``iter_N`` with the highest N left on disk, never a ``.tmp``), with no
damaged checkpoint found on the way. When a run reaches its last iteration, its ``history`` (every logged
scalar of every iteration, ``perf/*`` timings aside) must equal that of a run that was never killed; then
a new run starts, until the kills are done.

Prints the kills survived out of the kills, and the time taken. The test suite runs it with ``--kills 20``
(tests/test_checkpoints.py); docs/BENCHMARKS.md records the 200-kill figure.

By default each ``textenv train`` process is forked from this one, which has imported textenv, torch and
transformers once (``textenv.cli.main`` then runs in the child exactly as the command does): a fresh
interpreter spends ~5 s importing them, which would make 200 kills take half an hour. ``--exec`` starts
``python -m textenv.cli`` for every launch instead. Either way the victim is a separate process that SIGKILL
stops wherever it is.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fault_injection.py --kills 200``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

TRAIN = ["train", "--model", "tiny-random", "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4",
         "--reward", "sentiment + length(target=3, normalize=true)", "--eval-prompts", "0", "--precision", "fp32",
         "--no-progress", "--no-keep-cpu-memory", "--checkpoint-every", "1", "--sample-every", "1"]
ITER = re.compile(r"iter_(\d+)")
KINDS = {"random": 0.35, "writing": 0.45, "renamed": 0.20}


class Failure(Exception):
    """A kill that was not survived, or a history that differs: the benchmark stops and says why."""


class Launch:
    """One ``textenv train`` process, its output in a log file."""

    def __init__(self, argv: list[str], log: Path, use_exec: bool):
        self.log, self.started = log, time.perf_counter()
        self.returncode: int | None = None
        log.write_text("")
        if use_exec:
            with open(log, "w") as out:
                self.proc = subprocess.Popen([sys.executable, "-m", "textenv.cli", *argv], stdout=out,
                                             stderr=subprocess.STDOUT)
            self.pid = self.proc.pid
            return
        self.proc = None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: textenv train, as the command runs it
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                from textenv.cli import main

                code = main(argv)
            except BaseException:  # noqa: BLE001 - reported in the log, the exit status says it failed
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            if self.proc is not None:
                self.returncode = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.001)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def complete_iterations(run: Path) -> list[int]:
    """The iterations of the complete periodic checkpoints on disk (by name, as resuming chooses)."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := ITER.fullmatch(p.name)))


def writing(run: Path, since_ns: int = 0) -> bool:
    """Whether a checkpoint write is under way: a ``.tmp`` directory changed since ``since_ns`` (a kill's
    leftover from before counts only once the new write of its name starts removing it)."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return False
    for p in folder.iterdir():
        try:
            if p.name.endswith(".tmp") and p.stat().st_ctime_ns >= since_ns:
                return True
        except FileNotFoundError:
            pass
    return False


def wait_for(launch: Launch, condition, poll: float = 0.0005) -> bool:
    """Wait until ``condition()`` holds (True) or the process exits (False)."""
    while not condition():
        if launch.poll() is not None:
            return condition()
        time.sleep(poll)
    return True


def ready(launch: Launch) -> bool:
    """Wait until the process has loaded and says so, or says it failed, or exits."""
    return wait_for(launch, lambda: "ready in" in launch.output() or "error" in launch.output())


def wait_for_moment(launch: Launch, run: Path, kind: str, rng: random.Random, iteration_time: float,
                    write_time: float) -> bool:
    """Wait for a moment of the given kind; False if the process exited first."""
    if kind == "random":
        deadline = time.perf_counter() + rng.uniform(0, 2 * iteration_time)
        return wait_for(launch, lambda: time.perf_counter() >= deadline)
    if kind == "writing":
        since = time.time_ns()
        if not wait_for(launch, lambda: writing(run, since)):
            return False
        time.sleep(rng.uniform(0, write_time))
        return launch.poll() is None
    before = complete_iterations(run)
    return wait_for(launch, lambda: complete_iterations(run) != before)


def history(run: Path) -> list[dict[str, float]]:
    last = complete_iterations(run)[-1]
    state = json.loads((run / "checkpoints" / f"iter_{last:06d}" / "trainer_state.json").read_text())
    return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in state["history"]]


def compare(got: list[dict[str, float]], expected: list[dict[str, float]]) -> float:
    """The largest absolute difference between two histories; raises Failure if they differ beyond float noise."""
    if len(got) != len(expected):
        raise Failure(f"the resumed history has {len(got)} iterations where the unbroken run has {len(expected)}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(got, expected)):
        if a.keys() != b.keys():
            raise Failure(f"iteration {i + 1} logged {sorted(a.keys() ^ b.keys())} in one run only")
        for key in a:
            if not math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7):
                raise Failure(f"iteration {i + 1}: {key} is {a[key]} after the kills, {b[key]} unbroken")
            worst = max(worst, abs(a[key] - b[key]))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=8, help="iterations of each run (new runs until the "
                                                                   "kills are done)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kinds and moments of the kills")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds: stop killing after this long (the run in progress is then finished)")
    parser.add_argument("--exec", dest="use_exec", action="store_true",
                        help="start a fresh interpreter for every launch instead of forking this one")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temporary one)")
    args = parser.parse_args()
    if not args.use_exec:  # import once here; each forked launch starts warm
        import textenv.agents.ppo  # noqa: F401
        import textenv.cli  # noqa: F401
        from textenv.plugin_manager import get_plugin_manager

        get_plugin_manager().reward_sources()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="textenv-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    argv = [*TRAIN, "--iterations", str(args.iterations)]

    # The unbroken run: the history to match, and how long an iteration and a checkpoint write take.
    unbroken_dir = workdir / "unbroken"
    launch = Launch([*argv, "--output-dir", str(unbroken_dir)], workdir / "unbroken.log", args.use_exec)
    ready(launch)
    ready_at = time.perf_counter()
    writes, seen_tmp = [], None
    while launch.poll() is None:
        if writing(unbroken_dir):
            seen_tmp = seen_tmp or time.perf_counter()
        elif seen_tmp is not None:
            writes.append(time.perf_counter() - seen_tmp)
            seen_tmp = None
        time.sleep(0.0005)
    if launch.returncode != 0:
        print(launch.output())
        raise SystemExit(f"the unbroken run failed with exit status {launch.returncode}")
    expected = history(unbroken_dir)
    iteration_time = (time.perf_counter() - ready_at) / args.iterations
    write_time = statistics.median(writes) if writes else 0.02
    print(f"unbroken run: {args.iterations} iterations, {iteration_time:.2f} s each, a checkpoint write "
          f"{1000 * write_time:.0f} ms; launcher: {'exec' if args.use_exec else 'fork'}", flush=True)

    kills = survived = rounds = 0
    kinds = {kind: 0 for kind in KINDS}
    worst = 0.0
    failure = None
    try:
        while kills < args.kills and (args.time_limit is None or time.perf_counter() - start < args.time_limit):
            rounds += 1
            run = workdir / f"run{rounds}"
            launch = Launch([*argv, "--output-dir", str(run)], workdir / f"run{rounds}.log", args.use_exec)
            if not wait_for(launch, lambda: complete_iterations(run)):  # noqa: B023 - kills start once there is a checkpoint
                raise Failure(f"run {rounds} ended before its first checkpoint:\n{launch.output()[-2000:]}")
            while True:
                out_of_time = args.time_limit is not None and time.perf_counter() - start >= args.time_limit
                if kills >= args.kills or out_of_time:
                    wait_for(launch, lambda: False)  # let the run finish
                    break
                kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
                alive = wait_for_moment(launch, run, kind, rng, iteration_time, write_time)
                if not alive or launch.poll() is not None:
                    break  # the run reached its end first
                launch.kill()
                kills += 1
                kinds[kind] += 1
                newest = complete_iterations(run)[-1]  # what a resume must load: nothing changes after the kill
                launch = Launch([*argv, "--resume", str(run)], workdir / f"run{rounds}-{kills}.log", args.use_exec)
                ready(launch)
                out = launch.output()
                wanted = f"resuming from {run / 'checkpoints' / f'iter_{newest:06d}'}\n"
                # killed after its last checkpoint, before it exited: the run is whole, and its resume says so
                finished = newest == args.iterations and f"nothing to do: the run has done {newest} iterations" in out
                if not finished and ("ready in" not in out or wanted not in out or "damaged" in out):
                    launch.poll() is None and launch.kill()
                    raise Failure(f"kill {kills} ({kind}): the resume did not load iter_{newest:06d} cleanly:\n"
                                  f"{out[-3000:]}")
                survived += 1
            if launch.returncode != 0:
                raise Failure(f"run {rounds} ended with exit status {launch.returncode}:\n{launch.output()[-3000:]}")
            worst = max(worst, compare(history(run), expected))
            shutil.rmtree(run, ignore_errors=True)
            print(f"run {rounds}: ended as the unbroken run did after {kills} kills in all", flush=True)
    except Failure as exc:
        failure = exc
    elapsed = time.perf_counter() - start
    print(f"kills by moment: {kinds['random']} random, {kinds['writing']} while a checkpoint was written, "
          f"{kinds['renamed']} just after one was renamed into place; {rounds} run(s) of {args.iterations} iterations")
    share = 100 * survived / kills if kills else 0.0
    print(f"kills survived: {survived}/{kills} ({share:.0f} %); every finished run's history equals the unbroken "
          f"run's (largest difference {worst:.1e})" if failure is None else f"kills survived: {survived}/{kills}")
    print(f"time: {elapsed:.0f} s")
    if failure is not None:
        print(f"FAILED: {failure}")
        return 1
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
