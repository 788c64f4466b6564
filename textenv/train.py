"""The main job: ``textenv train`` — evaluate, train with PPO, evaluate again, report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from textenv.envs.text_gen_vector import TextGenVectorEnv


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest one in its ``checkpoints/``."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    found = sorted(
        (p for p in (path / "checkpoints").glob("*") if (p / "trainer_state.json").exists()),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise FileNotFoundError(f"no checkpoint in {path} (looked for trainer_state.json)")
    return found[-1]


def run_training(args: argparse.Namespace) -> int:
    """Run ``textenv train`` with parsed command-line arguments."""
    from textenv.agents import PPO, TrainingError

    start = time.perf_counter()
    env = TextGenVectorEnv(
        1, model=args.model, prompts=args.prompts, reward=args.reward, max_new_tokens=args.max_new_tokens
    )
    options = dict(
        batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, ppo_epochs=args.ppo_epochs,
        advantage=args.advantage, group_size=args.group_size, device=args.device, precision=args.precision,
        seed=args.seed, init_kl_coef=args.kl_coef, vf_coef=args.vf_coef, lam=args.lam, cliprange=args.clip,
        run_dir=args.output_dir, checkpoint_every=max(1, args.iterations // 4),
        lr_decay_episodes=args.iterations * args.batch_size if args.lr_schedule == "linear" else None,
    )
    options["learning_rate"] = args.lr
    if args.resume:
        checkpoint = latest_checkpoint(args.resume)
        print(f"resuming from {checkpoint}", flush=True)
        agent = PPO.load(checkpoint, env, run_dir=args.output_dir, device=args.device)
    else:
        print(f"loading {args.model} ...", flush=True)
        agent = PPO(env, **options)
    print(f"ready in {time.perf_counter() - start:.1f} s on {agent.device}"
          f"{' (bf16 autocast)' if agent.bf16 else ''}; reward = {args.reward}", flush=True)

    prompts = [env.task.prompts[i % len(env.task.prompts)] for i in range(args.eval_prompts)]
    before = agent.evaluate(prompts, seed=args.seed) if prompts else None
    total = args.iterations * agent.config.batch_size
    try:
        agent.learn(total, reset_num_episodes=not args.resume)
    except TrainingError as error:  # its message says what went wrong and where the last good state is
        print(f"textenv: error: {error}", file=sys.stderr)
        return 2
    after = agent.evaluate(prompts, seed=args.seed) if prompts else None

    if before is not None:
        print("\nsamples (same prompts, same sampling seed):")
        for i in range(min(4, len(prompts))):
            print(f"  {prompts[i]}")
            print(f"    before [{before.rewards[i]:+.2f}] {before.completions[i].strip()[:120]!r}")
            print(f"    after  [{after.rewards[i]:+.2f}] {after.completions[i].strip()[:120]!r}")
        print(f"\nmean reward on {len(prompts)} prompts: before {np.mean(before.rewards):+.3f}, "
              f"after {np.mean(after.rewards):+.3f}")
    curve = [h["charts/episodic_return"] for h in agent.history]
    if curve:
        print(f"training reward by iteration: {' '.join(f'{r:+.2f}' for r in curve)}")
    print(f"run directory: {args.output_dir} (TensorBoard events, samples.jsonl, reward_curve.png, checkpoints/)")
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 0
