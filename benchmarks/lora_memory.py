"""Peak memory of PPO with full fine-tuning against LoRA, on SmolLM2-135M.

Workload: the PPO throughput one (benchmarks/ppo_throughput.py): SmolLM2-135M-Instruct, 16 movie-review openings
x 32 sampled tokens per iteration, VADER reward, batch 16, mini-batch 8, 4 PPO epochs, precision auto (bf16
autocast where the CPU has it). Full fine-tuning keeps the fp32 policy, its gradients, Adam's two moments and a
frozen reference copy; LoRA (rank 16 on every projection) keeps one base, read by the reference with the adapter
disabled, and trains the adapters and the value head only.

Each mode runs in its own process, so ``ru_maxrss`` (the process's peak resident memory) is its own; the RSS
after building the agent is printed too. Run::

    .venv/bin/python benchmarks/lora_memory.py --iterations 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mib() -> float:
    """The process's current resident memory in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run(mode: str, iterations: int, rank: int, model: str = "smollm2-135m") -> dict:
    """A few PPO iterations in this process; its peak RSS and timings."""
    import gymnasium as gym
    import torch

    import textenv  # noqa: F401  (registers the env)
    from textenv.agents import PPO

    env = gym.make("textenv/TextGen-v0", model=model, prompts="movie-reviews", reward="sentiment",
                   max_new_tokens=32, eos_token_ids=[])  # exactly 32 tokens per episode
    options = dict(batch_size=16, mini_batch_size=8, ppo_epochs=4, progress=False, seed=0)
    if mode == "lora":
        options.update(lora_rank=rank, lora_alpha=2.0 * rank)
    agent = PPO(env, **options)
    built = rss_mib()
    trainable = sum(p.numel() for group in agent.optimizer.param_groups for p in group["params"])
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        stats = agent.train_iteration()
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "rss_after_setup_mib": built,
        "trainable_params": trainable,
        "bf16": agent.bf16,
        "s_per_iteration": sorted(times)[len(times) // 2],
        "last_kl": stats["objective/kl"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m", help="tiny-random: a smoke run")
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # a child process's one run
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.iterations, args.rank, args.model)))
        return
    rows = []
    for mode in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--iterations", str(args.iterations),
                              "--rank", str(args.rank), "--model", args.model], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"the {mode} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"PPO on {args.model}, 16 x 32 tokens, 4 epochs, {args.iterations} iterations, "
          f"bf16={rows[0]['bf16']}, LoRA rank {args.rank}")
    print(f"{'mode':<6} {'peak RSS':>10} {'after setup':>12} {'trainable':>12} {'s/iteration':>12}")
    for r in rows:
        print(f"{r['mode']:<6} {r['peak_rss_mib']:>7.0f} MiB {r['rss_after_setup_mib']:>8.0f} MiB "
              f"{r['trainable_params']:>12,} {r['s_per_iteration']:>12.1f}")
    print(f"LoRA's peak: {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.0%} of full fine-tuning's")


if __name__ == "__main__":
    main()
