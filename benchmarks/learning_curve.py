"""The default task's learning curve: mean VADER compound and KL against episodes.

Trains SmolLM2-135M-Instruct on movie-review openings with PPO against the default
reward (``sentiment + repetition``) and prints, per iteration, the batch's mean VADER
compound (the ``sentiment`` term, or ``sentiment_dense``'s per-episode sum) and the
KL to the reference (nats per episode); at the end, the first episode count at which
the mean VADER compound of the last three iterations reached the goal, and a PNG of the curve. Run::

    .venv/bin/python benchmarks/learning_curve.py --episodes 1000 --lr 5e-5
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np

import textenv  # noqa: F401  (registers the env)
from textenv.agents import PPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--reward", default="sentiment + repetition")
    parser.add_argument("--goal", type=float, default=0.8, help="mean VADER compound to reach")
    parser.add_argument("--run-dir", default="runs/learning_curve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--advantage", choices=["gae", "rloo", "grpo"], default="gae")
    parser.add_argument("--group-size", type=int, default=4, help="samples per prompt for rloo/grpo")
    parser.add_argument("--kl-horizon", type=int, default=10_000, help="adaptive KL controller's horizon")
    parser.add_argument("--batch-size", type=int, default=16, help="episodes per iteration")
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--init-kl-coef", type=float, default=0.2, help="initial weight of the KL penalty")
    parser.add_argument("--vf-coef", type=float, default=0.1, help="weight of the value loss (gae)")
    parser.add_argument("--lam", type=float, default=0.95, help="GAE's lambda")
    parser.add_argument("--gamma", type=float, default=1.0, help="discount per token")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per mini-batch")
    parser.add_argument("--kl-in-loss", action="store_true", help="the KL penalty in the loss (k3), not the reward")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollout")
    parser.add_argument("--value-lr", type=float, default=None, help="learning rate of the value head (default: --lr)")
    parser.add_argument("--kl-estimator", choices=["k1", "k2", "k3", "full"], default=None,
                        help="per-token KL estimator (default: k1 in the reward, k3 in the loss)")
    parser.add_argument("--ent-coef", type=float, default=0.0, help="weight of the entropy bonus")
    parser.add_argument("--kl-target", type=float, default=6.0, help="adaptive KL controller's target (nats)")
    parser.add_argument("--lr-decay-episodes", type=int, default=None,
                        help="anneal the learning rates linearly to 0 at this many episodes (default: constant)")
    parser.add_argument("--cliprange", type=float, default=0.2, help="PPO's ratio clip")
    parser.add_argument("--cliprange-value", type=lambda v: None if v == "none" else float(v), default=0.2,
                        help="value clip around the rollout's values ('none': off)")
    parser.add_argument("--value-model", choices=["shared", "separate"], default="shared",
                        help="the value head on the policy's trunk or on its own copy of the LM")
    parser.add_argument("--eval-batches", type=int, default=4,
                        help="after training, batches sampled from the final policy to measure its VADER and KL")
    args = parser.parse_args()

    env = gym.make("textenv/TextGen-v0", model="smollm2-135m", prompts="movie-reviews", reward=args.reward,
                   max_new_tokens=32)
    agent = PPO(env, learning_rate=args.lr, run_dir=args.run_dir, seed=args.seed, checkpoint_every=0,
                sample_every=10, progress=False, advantage=args.advantage, group_size=args.group_size,
                kl_horizon=args.kl_horizon, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                ppo_epochs=args.ppo_epochs, init_kl_coef=args.init_kl_coef, kl_in_loss=args.kl_in_loss,
                temperature=args.temperature, gradient_accumulation_steps=args.grad_accum, vf_coef=args.vf_coef,
                lam=args.lam, gamma=args.gamma, value_learning_rate=args.value_lr, kl_target=args.kl_target,
                ent_coef=args.ent_coef, kl_estimator=args.kl_estimator, value_model=args.value_model,
                cliprange=args.cliprange, cliprange_value=args.cliprange_value,
                lr_decay_episodes=args.lr_decay_episodes)
    print(f"load average {os.getloadavg()[0]:.2f}; lr {args.lr} (to 0 at {args.lr_decay_episodes}); "
          f"{args.advantage}; kl horizon {args.kl_horizon}; "
          f"batch {args.batch_size}/{args.mini_batch_size}/{args.grad_accum} x {args.ppo_epochs} epochs; "
          f"kl coef {args.init_kl_coef}{' in the loss' if args.kl_in_loss else ''} ({agent.config.kl_estimator_used}); "
          f"vf_coef {args.vf_coef}; "
          f"lambda {args.lam}; gamma {args.gamma}; temperature {args.temperature}; "
          f"value lr {args.lr if args.value_lr is None else args.value_lr}; "
          f"kl target {args.kl_target}; ent_coef {args.ent_coef}; {args.value_model} value model; "
          f"clip {args.cliprange}; value clip {args.cliprange_value}; "
          f"reward {args.reward}; "
          f"{'bf16 autocast' if agent.bf16 else 'fp32'}", flush=True)
    print(f"{'episodes':>8} {'vader':>7} {'kl':>6} {'kl_coef':>7} {'s/iter':>7}", flush=True)
    dense = "sentiment_dense" in agent.task.rewards.names
    vader_key = "reward/sentiment_dense" if dense else "reward/sentiment"
    vader, reached = [], None
    start = time.perf_counter()
    while agent.num_episodes + agent.config.batch_size <= args.episodes:  # never past the budget
        t = time.perf_counter()
        stats = agent.train_iteration()
        vader.append(stats[vader_key])
        recent = float(np.mean(vader[-3:]))
        if reached is None and len(vader) >= 3 and recent >= args.goal:
            reached = agent.num_episodes
        print(f"{agent.num_episodes:>8} {stats[vader_key]:>+7.3f} {stats['objective/kl']:>6.2f} "
              f"{stats['objective/kl_coef']:>7.3f} {time.perf_counter() - t:>7.1f}", flush=True)
    final_vader, final_kl = evaluate_final_policy(agent, vader_key, args.eval_batches)
    agent.run.close()
    from textenv.agents.run_log import plot_reward_curve

    path = plot_reward_curve(agent.history, f"{args.run_dir}/reward_curve.png")
    print_windows(agent.history, vader_key, agent.config.batch_size)
    print(f"final policy after {agent.num_episodes} episodes, {args.eval_batches * agent.config.batch_size} fresh "
          f"samples: mean VADER {final_vader:+.3f}, KL {final_kl:.2f} nats")
    print(f"goal {args.goal}: " + (f"reached at {reached} episodes" if reached else "not reached")
          + f"; {time.perf_counter() - start:.0f} s; curve in {path}; load average {os.getloadavg()[0]:.2f}")


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
