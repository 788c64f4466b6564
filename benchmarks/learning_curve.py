"""The default task's learning curve: mean VADER compound and KL against episodes.

Trains SmolLM2-135M-Instruct on movie-review openings with PPO (PPOConfig's defaults,
the main job's setting) against the main job's reward (``sentiment_dense + repetition``)
and prints, per iteration, the batch's mean VADER
compound (the ``sentiment`` term, or ``sentiment_dense``'s per-episode sum) and the
KL to the reference (nats per episode); at the end, the first episode count at which
the mean VADER compound of the last three iterations reached the goal, and a PNG of the curve. Run::

    .venv/bin/python benchmarks/learning_curve.py --episodes 1000 --seed 0

Any PPOConfig field is a flag, as for ``textenv train`` (``--lam 0.9``, ``--init-kl-coef 0.1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import gymnasium as gym
import numpy as np

import textenv  # noqa: F401  (registers the env)
from textenv.agents import PPO, PPOConfig
from textenv.agents.train import TRAIN_REWARD
from textenv.cli import add_dataclass_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="the policy's model (tiny-random: a smoke run)")
    parser.add_argument("--episodes", type=int, default=1000, help="budget: whole iterations up to this many")
    parser.add_argument("--reward", default=TRAIN_REWARD, help=f"reward spec (default: {TRAIN_REWARD!r})")
    parser.add_argument("--goal", type=float, default=0.8, help="mean VADER compound to reach")
    parser.add_argument("--eval-batches", type=int, default=4,
                        help="after training, batches sampled from the final policy to measure its VADER and KL")
    # Every PPO option, its default PPOConfig's (the main job's setting), as `textenv train` takes them.
    add_dataclass_arguments(parser, PPOConfig, aliases={"learning_rate": ("--lr",)})
    args = parser.parse_args()
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig) if hasattr(args, f.name)}
    options = {"run_dir": "runs/learning_curve", "checkpoint_every": 0, "sample_every": 10, "progress": False,
               **options}

    env = gym.make("textenv/TextGen-v0", model=args.model, prompts="movie-reviews", reward=args.reward,
                   max_new_tokens=32)
    agent = PPO(env, **options)
    changed = {k: v for k, v in dataclasses.asdict(agent.config).items() if v != getattr(PPOConfig(), k)}
    print(f"load average {os.getloadavg()[0]:.2f}; PPOConfig defaults with {changed}; "
          f"KL estimator {agent.config.kl_estimator_used}; reward {args.reward}; "
          f"{'bf16 autocast' if agent.bf16 else 'fp32'}", flush=True)
    print(f"{'episodes':>8} {'vader':>7} {'kl':>6} {'kl_coef':>7} {'lr':>8} {'s/iter':>7}", flush=True)
    dense = "sentiment_dense" in agent.task.rewards.names
    vader_key = "reward/sentiment_dense" if dense else "reward/sentiment"
    vader, reached = [], None
    start = last = time.perf_counter()

    def report(agent: PPO, stats: dict[str, float]) -> None:
        nonlocal reached, last
        vader.append(stats[vader_key])
        if reached is None and len(vader) >= 3 and float(np.mean(vader[-3:])) >= args.goal:
            reached = agent.num_episodes
        print(f"{agent.num_episodes:>8} {stats[vader_key]:>+7.3f} {stats['objective/kl']:>6.2f} "
              f"{stats['objective/kl_coef']:>7.3f} {stats['charts/learning_rate']:>8.2e} "
              f"{time.perf_counter() - last:>7.1f}", flush=True)
        last = time.perf_counter()

    # learn(): the learning rate anneals over exactly this budget, as in `textenv train`.
    agent.learn(args.episodes // agent.config.batch_size * agent.config.batch_size, callback=report)
    final_vader, final_kl = evaluate_final_policy(agent, vader_key, args.eval_batches)
    agent.run.close()
    print_windows(agent.history, vader_key, agent.config.batch_size)
    print(f"final policy after {agent.num_episodes} episodes, {args.eval_batches * agent.config.batch_size} fresh "
          f"samples: mean VADER {final_vader:+.3f}, KL {final_kl:.2f} nats")
    print(f"goal {args.goal}: " + (f"reached at {reached} episodes" if reached else "not reached")
          + f"; {time.perf_counter() - start:.0f} s; curve in {agent.run.dir / 'reward_curve.png'}; "
          f"load average {os.getloadavg()[0]:.2f}")


def print_windows(history: list[dict[str, float]], vader_key: str, batch_size: int) -> None:
    """Mean VADER and KL over windows of 5 iterations, then over the first and last 3 iterations."""
    print("\nwindows of 5 iterations: episodes, mean VADER, mean KL")
    for start_i in range(0, len(history), 5):
        window = history[start_i : start_i + 5]
        print(f"  {int(window[0]['episodes']) - batch_size + 1:>5}-{int(window[-1]['episodes']):<5} "
              f"{np.mean([h[vader_key] for h in window]):+.2f} "
              f"{np.mean([h['objective/kl'] for h in window]):6.2f}", flush=True)
    vader = [h[vader_key] for h in history]
    print(f"\nfirst 3 iterations: mean VADER {np.mean(vader[:3]):+.3f}; last 3: {np.mean(vader[-3:]):+.3f}, "
          f"KL {np.mean([h['objective/kl'] for h in history[-3:]]):.2f} nats")


def evaluate_final_policy(agent: PPO, vader_key: str, batches: int) -> tuple[float, float]:
    """Mean VADER compound and KL to the reference (k1, nats per episode) of fresh samples from the policy.

    Samples as training does (same temperature, new prompts) but takes no step, so the
    figure belongs to one policy, the one training ended with.
    """
    vader, kl = [], []
    for _ in range(batches):
        episodes = agent.rollout()
        _, stats = agent.make_batch(episodes)
        vader.append(float(episodes.reward_terms[vader_key.removeprefix("reward/")].mean()))
        kl.append(stats["objective/kl"])
    return float(np.mean(vader)), float(np.mean(kl))


if __name__ == "__main__":
    main()
