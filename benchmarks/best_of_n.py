"""Best-of-n sampling from the untrained model: the reward a given KL budget can buy.

Samples ``--n`` completions per prompt from SmolLM2-135M-Instruct (the reference
policy of the default task), scores them with the default reward, and for each
n' dividing n keeps the best of each group of n' (by the total reward) and reports the
mean VADER compound of those picks. The best-of-n policy's KL to the sampling model
is at most log n - (n - 1) / n nats (Beirami et al., 2024), so each row is a point
that an RL-trained policy's reward-against-KL curve can be compared with. Run::

    .venv/bin/python benchmarks/best_of_n.py --prompts 16 --n 64
"""

from __future__ import annotations

import argparse
import math
import os
import time

import gymnasium as gym
import numpy as np

import textenv  # noqa: F401  (registers the env)
from textenv.agents import PPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="prompts drawn from the movie-review set")
    parser.add_argument("--n", type=int, default=64, help="samples per prompt (a power of 2)")
    parser.add_argument("--reward", default="sentiment + repetition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m", help="the sampling model (tiny-random: a smoke run)")
    args = parser.parse_args()

    env = gym.make("textenv/TextGen-v0", model=args.model, prompts="movie-reviews", reward=args.reward,
                   max_new_tokens=32)
    agent = PPO(env, advantage="rloo", init_kl_coef=0.0, adaptive_kl=False, progress=False, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    prompts = [agent.task.prompts[k] for k in rng.choice(len(agent.task.prompts), args.prompts, replace=False)]
    print(f"load average {os.getloadavg()[0]:.2f}; {args.prompts} prompts x {args.n} samples; reward {args.reward}",
          flush=True)
    start = time.perf_counter()
    totals, vader = [], []  # each (prompts, n)
    for i, prompt in enumerate(prompts):
        episodes = agent.evaluate([prompt] * args.n, seed=args.seed + i)
        totals.append(episodes.rewards)
        vader.append(episodes.reward_terms["sentiment"])
    totals, vader = np.stack(totals), np.stack(vader)  # (prompts, n) each
    print(f"{'n':>4} {'KL bound':>9} {'VADER':>7} {'reward':>7}")
    n = 1
    while n <= args.n:
        groups = args.n // n
        order = totals.reshape(args.prompts, groups, n).argmax(-1)  # (prompts, groups) the pick in each group
        picked_vader = np.take_along_axis(vader.reshape(args.prompts, groups, n), order[..., None], -1)
        picked_total = np.take_along_axis(totals.reshape(args.prompts, groups, n), order[..., None], -1)
        kl = math.log(n) - (n - 1) / n
        print(f"{n:>4} {kl:>9.2f} {picked_vader.mean():>+7.3f} {picked_total.mean():>+7.3f}", flush=True)
        n *= 2
    print(f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
