"""PPO throughput: textenv's agent against trl, side by side, on one workload.

Workload (classic PPO): SmolLM2-135M-Instruct (the converted safetensors of
``textenv.models.resolve_model("smollm2-135m")``, loaded by both systems), 16
movie-review openings x 32 sampled tokens per step (no early EOS, as trl's
``min_new_tokens=32``), VADER compound reward, batch 16, mini-batch 8, 4 PPO epochs.
Against trl 0.11.4's value-head ``PPOTrainer`` (its own venv, transformers 4.46) at
fp32 and bf16 mixed precision, and bf16 again with glibc told to keep freed memory
(``GLIBC_TUNABLES``, what our agent's ``keep_cpu_memory`` does in-process); the ratio
is against trl's fastest run.

Critic-free: 4 prompts x 4 samples x 32 tokens, one update per batch, no KL term:
our ``advantage="grpo"`` against trl 1.16's ``GRPOTrainer``.

Each system runs in its own process (so peak memory is its own): one warm-up step,
then ``--steps`` timed steps; medians. Run::

    bash benchmarks/baselines/setup_trl011.sh && bash benchmarks/baselines/setup_trl116.sh  # once
    .venv/bin/python benchmarks/ppo_throughput.py --steps 3

``--model tiny-random --steps 1 --warmup 0`` runs our side alone in seconds (the test suite's smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from timing import TimedRewards

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m"  # the baselines load its converted safetensors: they run on this model only
BASELINES = HERE / "baselines"
TRL011_PYTHON = BASELINES / ".venv-trl011" / "bin" / "python"
TRL116_PYTHON = BASELINES / ".venv-trl116" / "bin" / "python"
# What PPOConfig.keep_cpu_memory does in our process, set from outside for the baselines.
KEEP_FREED_MEMORY = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"}


# ------------------------------------------------------------------ our side


def run_ours(mode: str, precision: str, steps: int, warmup: int, keep_cpu_memory: bool = True,
             model: str = MODEL) -> dict:
    """One of our runs in this process; returns the medians as a dict."""
    import gymnasium as gym
    import torch

    import textenv  # noqa: F401  (registers the env)
    from textenv.agents import PPO

    env = gym.make("textenv/TextGen-v0", model=model, prompts="movie-reviews", reward="sentiment",
                   max_new_tokens=32, eos_token_ids=[])  # exactly 32 tokens, as trl's min_new_tokens
    if mode == "ppo":
        options = dict(batch_size=16, mini_batch_size=8, ppo_epochs=4)
    else:  # GRPO-style: 4 prompts x 4 samples, one update per batch, no KL term
        options = dict(batch_size=16, mini_batch_size=16, ppo_epochs=1, advantage="grpo", group_size=4,
                       init_kl_coef=0.0, adaptive_kl=False)
    agent = PPO(env, precision=precision, progress=False, seed=0, keep_cpu_memory=keep_cpu_memory, **options)
    timed = TimedRewards(agent.task.rewards)
    agent.task.rewards = timed
    rows = []
    for step in range(warmup + steps):
        timed.seconds = 0.0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        stats = agent.train_iteration()
        wall = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        if step >= warmup:
            tokens = agent.config.batch_size * 32
            rows.append({
                "s_per_step": wall, "tokens_per_s": tokens / wall,
                "generation": stats["perf/time_rollout"] - timed.seconds, "reward": timed.seconds,
                "forward": stats["perf/time_prepare"], "update": stats["perf/time_update"],
                "old_logprobs": stats["perf/time_policy_forward"],  # the batched recomputation, within forward
                "mean_reward": stats["charts/episodic_return"], "page_faults_k": faults / 1000,
            })
    return {
        "system": f"textenv {mode}", "precision": "bf16" if agent.bf16 else "fp32",
        "threads": torch.get_num_threads(), **_medians(rows),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _medians(rows: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


# ------------------------------------------------------------------ the parent


FAILED: list[str] = []  # the systems whose run failed: the script then exits 1, after printing the others


def child(cmd: list[str], label: str, env: dict[str, str] | None = None) -> dict | None:
    """Run one system in its own process (``env`` added to its environment); its last stdout line is its JSON."""
    print(f"running {label} ...", flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        print(f"  {label} failed (exit {result.returncode}):\n{result.stderr[-2000:]}", flush=True)
        FAILED.append(label)
        return None
    figures = json.loads(lines[-1])
    parts = figures.pop("breakdown_s", {})  # the baselines' names for the same phases
    for ours, theirs in [("generation", "generate_s"), ("reward", "reward_s"), ("forward", "forward_s"),
                         ("update", "update_s")]:
        figures.setdefault(ours, parts.get(theirs, float("nan")))
    figures.setdefault("mean_reward", figures.get("reward_mean", float("nan")))
    print(f"  {figures.get('tokens_per_s', 0):.1f} tokens/s, {figures.get('s_per_step', 0):.2f} s/step", flush=True)
    return figures


def table(results: list[dict]) -> None:
    keys = ["s_per_step", "tokens_per_s", "generation", "reward", "forward", "old_logprobs", "update", "peak_rss_mb",
            "mean_reward"]
    print(f"\n{'system':<30}{'precision':<10}" + "".join(f"{k:>13}" for k in keys))
    for r in results:
        cells = "".join(f"{r.get(k, float('nan')):>13.2f}" for k in keys)
        print(f"{r['system']:<30}{r['precision']:<10}{cells}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system (after one warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", choices=["ppo", "grpo"], help="run only this comparison")
    parser.add_argument("--model", default=MODEL, help=f"our side's model; the trl baselines run only on {MODEL}")
    parser.add_argument("--ours", choices=["ppo", "grpo"], help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--keep-cpu-memory", choices=["on", "off"], default="on",
                        help="with --ours: PPOConfig.keep_cpu_memory (off: glibc's default malloc)")
    args = parser.parse_args()
    if args.ours:
        print(json.dumps(run_ours(args.ours, args.precision, args.steps, args.warmup, args.keep_cpu_memory == "on",
                                  args.model)), flush=True)
        return 0

    me = [sys.executable, __file__, "--steps", str(args.steps), "--warmup", str(args.warmup), "--model", args.model]
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores", flush=True)
    if args.only in (None, "ppo"):
        results = [r for r in (
            child(me + ["--ours", "ppo"], "textenv PPO (auto precision)"),
            _trl(TRL011_PYTHON, "trl011_ppo.py", ["--precision", "fp32"], args, "trl 0.11.4 PPO fp32"),
            _trl(TRL011_PYTHON, "trl011_ppo.py", ["--precision", "bf16"], args, "trl 0.11.4 PPO bf16"),
            _trl(TRL011_PYTHON, "trl011_ppo.py", ["--precision", "bf16"], args, "trl 0.11.4 PPO bf16 kept",
                 KEEP_FREED_MEMORY),
        ) if r]
        table(results)
        _ratio(results, "textenv ppo", "trl")
    if args.only in (None, "grpo"):
        results = [r for r in (
            child(me + ["--ours", "grpo"], "textenv GRPO-style (auto precision)"),
            _trl(TRL116_PYTHON, "trl_grpo.py", ["--precision", "bf16"], args, "trl 1.16 GRPOTrainer"),
            _trl(TRL116_PYTHON, "trl_grpo.py", ["--precision", "bf16"], args, "trl 1.16 GRPOTrainer kept",
                 KEEP_FREED_MEMORY),
        ) if r]
        table(results)
        _ratio(results, "textenv grpo", "trl")
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if FAILED:
        print(f"failed: {', '.join(FAILED)}", flush=True)
    return 1 if FAILED else 0


def _trl(python: Path, script: str, extra: list[str], args, label: str,
         env: dict[str, str] | None = None) -> dict | None:
    if args.model != MODEL:
        print(f"skipping {label}: the baselines run on {MODEL} only, not --model {args.model}")
        return None
    if not python.exists():
        print(f"skipping {label}: run bash benchmarks/baselines/setup_{python.parent.parent.name[6:]}.sh first")
        return None
    figures = child([str(python), str(BASELINES / script), "--steps", str(args.steps), *extra], label, env)
    if figures is not None:
        figures["system"] = label
    return figures


def _ratio(results: list[dict], ours_prefix: str, theirs_prefix: str) -> None:
    ours = [r for r in results if r["system"].startswith(ours_prefix)]
    theirs = [r for r in results if r["system"].startswith(theirs_prefix)]
    if not ours or not theirs:
        return
    best = max(theirs, key=lambda r: r["tokens_per_s"])
    mine = ours[0]
    print(f"\n{ours_prefix}: {mine['tokens_per_s'] / best['tokens_per_s']:.2f}x the tokens/s of "
          f"{best['system']} ({best['precision']}); peak memory {mine['peak_rss_mb']:.0f} MB vs "
          f"{best['peak_rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
