"""Tokens per second of PPO with 1 and with 2 processes under ``accelerate launch``, side by side.

Runs ``textenv train`` on the default model (SmolLM2-135M-Instruct) with N processes sharing the
machine's cores (``--num_cpu_threads_per_process`` cores/N each), the same total batch, and
reads each iteration's ``perf/tokens_per_s`` (every process's tokens over the iteration's wall
time: rollout, log-probs and update) from the run's last checkpoint. Prints the median over the
iterations after the first (which also pays for warm-up). Run::

    .venv/bin/python benchmarks/processes_throughput.py --iterations 4

On a machine with few cores the processes only divide the same cores: the figure shows what the
reductions and the extra copy of the model cost, not what more devices would gain.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, args: argparse.Namespace, out: Path) -> dict:
    cores = os.cpu_count() or 1
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", args.mixed_precision, "--dynamo_backend", "no",
                "--num_cpu_threads_per_process", str(max(1, cores // processes)),
                "--main_process_port", str(free_port())]
    if processes > 1:
        launcher.append("--multi_gpu")  # (without it accelerate starts one process; on a CPU they use gloo)
    command = [*launcher, "-m", "textenv", "train", "--model", args.model, "--iterations", str(args.iterations),
               "--batch-size", str(args.batch_size), "--mini-batch-size", str(args.mini_batch_size),
               "--max-new-tokens", str(args.max_new_tokens), "--eval-prompts", "0", "--no-progress",
               "--checkpoint-every", "0", "--no-save-optimizer",
               "--output-dir", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                          if k != "OMP_NUM_THREADS"})
    if done.returncode:
        sys.exit(f"{processes} process(es) failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    last = sorted((out / "checkpoints").glob("iter_*"))[-1]
    history = json.loads((last / "trainer_state.json").read_text())["history"]
    later = history[1:] or history
    return {
        "tokens_per_s": statistics.median(h["perf/tokens_per_s"] for h in later),
        "per_iteration": [round(h["perf/tokens_per_s"], 1) for h in history],
        "s_per_iteration": statistics.median(h["perf/time_rollout"] + h["perf/time_prepare"] + h["perf/time_update"]
                                             for h in later),
        **{phase: statistics.median(h[f"perf/time_{phase}"] for h in later)
           for phase in ("rollout", "prepare", "update")},
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="the launches to compare")
    args = parser.parse_args()
    print(f"{args.model}: {args.iterations} iterations of {args.batch_size} episodes x {args.max_new_tokens} new "
          f"tokens, mini-batches of {args.mini_batch_size}, --mixed_precision {args.mixed_precision}, "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            results[n] = run(n, args, Path(tmp) / f"p{n}")
            r = results[n]
            print(f"{n} process(es): {r['tokens_per_s']:.1f} tokens/s (median of iterations 2-{args.iterations}; "
                  f"each: {r['per_iteration']}), {r['s_per_iteration']:.1f} s/iteration (rollout {r['rollout']:.1f}, "
                  f"log-probs {r['prepare']:.1f}, update {r['update']:.1f}), "
                  f"{r['wall_s']:.0f} s in all", flush=True)
    if 1 in results and 2 in results:
        print(f"2 processes / 1 process: {results[2]['tokens_per_s'] / results[1]['tokens_per_s']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
