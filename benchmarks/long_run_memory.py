"""Memory over a long run: resident memory sampled after every PPO iteration, and the run directory's disk use.

A long run must stay flat: nothing kept per iteration without bound (the agent's history, sample logs,
TensorBoard buffers), and checkpoint rotation bounding the disk. This trains the tiny model for
``--iterations`` iterations with a run directory and periodic checkpoints (``keep_checkpoints=2``),
samples the process's current and peak RSS (``VmRSS``/``VmHWM`` in ``/proc/self/status``) after each
iteration, and prints the figures at a few iterations, the least-squares slope of the current RSS over
the last 150 iterations, what the in-memory history holds per iteration, and the disk use at the end.

The agent's default ``keep_cpu_memory=True`` (glibc keeps freed memory for reuse) is left on, as a user
gets it: RSS then holds the peak of the update's temporaries, and what grows on top of it is what leaks.

Run (a few minutes on one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_run_memory.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPORT_AT = (10, 50, 100, 150, 200)


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB, from ``/proc/self/status``."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return fields["VmRSS"], fields["VmHWM"]


def disk_use_mib(path: Path) -> float:
    """Bytes of every file under ``path``, in MiB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def history_bytes(history: list[dict[str, float]]) -> float:
    """Approximate in-memory size of the agent's history: each dict and its values (keys are shared strings)."""
    return float(sum(sys.getsizeof(d) + sum(sys.getsizeof(v) for v in d.values()) for d in history))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--run-dir", default=None, help="default: a temporary directory, removed at the end")
    args = parser.parse_args()

    import gymnasium as gym
    import torch

    import textenv  # noqa: F401  (registers the env)
    from textenv.agents import PPO

    torch.set_num_threads(1)
    env = gym.make("textenv/TextGen-v0", model="tiny-random", prompts=["hello", "the movie was", "a"],
                   max_new_tokens=args.max_new_tokens, reward="length(target=8)")
    current: list[float] = []
    peak: list[float] = []

    def sample(agent, stats) -> None:
        rss, hwm = rss_mib()
        current.append(rss)
        peak.append(hwm)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir or Path(tmp) / "run")
        agent = PPO(env, batch_size=args.batch_size, mini_batch_size=args.batch_size // 2, run_dir=str(run_dir),
                    checkpoint_every=args.checkpoint_every, keep_checkpoints=2, progress=False, seed=0)
        start = time.perf_counter()
        agent.learn(args.iterations * args.batch_size, callback=sample)
        elapsed = time.perf_counter() - start
        disk = disk_use_mib(run_dir)
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        samples = run_dir / "samples.jsonl"
        samples_kib = samples.stat().st_size / 1024 if samples.exists() else 0.0

    n = len(current)
    print(f"{n} iterations of tiny-random (batch {args.batch_size} x {args.max_new_tokens} tokens, checkpoint every "
          f"{args.checkpoint_every}, keep 2) in {elapsed:.0f} s")
    print("iteration   RSS MiB   peak RSS MiB")
    for i in REPORT_AT:
        if i <= n:
            print(f"{i:9d}   {current[i - 1]:7.1f}   {peak[i - 1]:12.1f}")
    tail = min(150, n)
    x = np.arange(n - tail, n)
    slope = np.polyfit(x, np.asarray(current[n - tail:]), 1)[0] * 1024  # MiB -> KiB per iteration
    peak_slope = np.polyfit(x, np.asarray(peak[n - tail:]), 1)[0] * 1024
    print(f"slope over the last {tail} iterations: RSS {slope:+.2f} KiB/iteration, peak RSS {peak_slope:+.2f} "
          f"KiB/iteration")
    print(f"agent.history: {len(agent.history)} dicts, ~{history_bytes(agent.history) / max(n, 1):.0f} B per iteration")
    print(f"run directory at the end: {disk:.2f} MiB (checkpoints kept: {', '.join(checkpoints)}; samples.jsonl "
          f"{samples_kib:.1f} KiB)")


if __name__ == "__main__":
    main()
