"""Feedback efficiency: how many keypresses a (simulated) person needs to train the default task.

Two PPO runs on the default task (SmolLM2-135M-Instruct, movie-review openings, 32
new tokens, RLOO with 4 samples per prompt), the same seed and settings:

* **reference**: the reward is the scripted critic itself, ``sentiment`` (VADER's
  compound score of each completion);
* **human**: the reward is ``human(...)``, live TAMER feedback at a terminal, given by
  :class:`~textenv.plugins.human.simulated.SimulatedHuman` through a pseudo-terminal. It
  reads the streamed tokens, judges each word with VADER's lexicon and each finished
  completion with VADER's compound score, and presses g/b (with a strength digit)
  after a 0.3–1.5 s reaction, missing 10 % and pressing the wrong key 5 % of the time.

Both runs print, per iteration, the training batch's mean VADER compound (the human
run measures it with a zero-weight probe) and the *eval* score: the mean VADER
compound of the policy's completions of fixed prompts with a fixed sampling seed, in
an env the person never sees. The figure: the keypresses (and the person's time) the
human run needed for its eval score (mean of 3 iterations) to reach 90 % of the
reference's final one.

Time runs ``--time-scale`` times faster than a person's: the tokens stream at
``4 × scale`` tokens/s and every delay (reactions, the credit window 0.2–4 s, gaps)
is divided by ``scale``, so in tokens the problem is the one a person at 4 tokens/s
faces; "person minutes" below are the display time multiplied back. Run::

    .venv/bin/python benchmarks/feedback_efficiency.py --iterations 12 --time-scale 10
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import textenv
from textenv.agents import PPO
from textenv.plugins.human.simulated import HumanModel, SimulatedHuman, VaderCritic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=12, help="PPO iterations per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=10.0, help="how much faster than a person's time")
    parser.add_argument("--pace", type=float, default=4.0, help="tokens/s a person would read at")
    parser.add_argument("--attend", type=int, default=0,
                        help="the person gives feedback for this many iterations, then Ĥ alone (0: all)")
    parser.add_argument("--eval-prompts", type=int, default=32,
                        help="fixed prompts scored with a fixed sampling seed after every iteration")
    parser.add_argument("--runs", choices=["both", "reference", "human"], default="both")
    parser.add_argument("--goal", type=float, default=0.9, help="share of the reference's final score to reach")
    parser.add_argument("--reference-score", type=float, default=None,
                        help="the reference's final score, when --runs human skips it")
    parser.add_argument("--run-dir", default="runs/feedback_efficiency")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.2f}; {args.iterations} iterations x {args.batch_size} episodes; "
          f"lr {args.lr}; {args.ppo_epochs} PPO epochs; time x{args.time_scale:g}", flush=True)
    reference = None
    if args.runs in ("both", "reference"):
        curve, initial = run(args, "sentiment", label="reference (reward = VADER itself)")
        reference = float(np.mean(curve[-3:]))
        print(f"reference gain: {initial:+.3f} -> {reference:+.3f}", flush=True)
        print(f"reference final eval score (mean of the last 3 iterations): {reference:+.3f}", flush=True)
    if args.runs in ("both", "human"):
        reference = reference if reference is not None else args.reference_score
        human_run(args, reference)


def run(args: argparse.Namespace, reward: str, *, label: str, probe: list[float] | None = None,
        on_iteration=None) -> tuple[list[float], float]:
    """Train and print the VADER scores per iteration; returns the eval curve and the initial eval score."""
    env = gym.make("textenv/TextGen-v0", model="smollm2-135m", prompts="movie-reviews", reward=reward,
                   max_new_tokens=32)
    agent = PPO(env, learning_rate=args.lr, batch_size=args.batch_size, ppo_epochs=args.ppo_epochs,
                mini_batch_size=min(8, args.batch_size), advantage="rloo", group_size=4,
                seed=args.seed, checkpoint_every=0, progress=False, run_dir=None)
    evaluate = _evaluator(agent, args)
    print(f"\n{label}: reward = {reward}", flush=True)
    print(f"{'iter':>4} {'episodes':>8} {'vader':>7} {'eval':>7} {'kl':>6} {'s/iter':>7} {'rollout':>7}"
          + ("  keypresses  person-min" if on_iteration else ""), flush=True)
    curve = []
    initial = evaluate()
    print(f"{0:>4} {0:>8} {'':>7} {initial:>+7.3f}", flush=True)
    for it in range(args.iterations):
        start = time.perf_counter()
        seen = len(probe) if probe is not None else 0
        stats = agent.train_iteration()
        vader = float(np.mean(probe[seen:])) if probe is not None else stats["reward/sentiment"]
        extra = on_iteration(it) if on_iteration else ""
        score = evaluate()
        curve.append(score)
        print(f"{it + 1:>4} {agent.num_episodes:>8} {vader:>+7.3f} {score:>+7.3f} {stats['objective/kl']:>6.2f} "
              f"{time.perf_counter() - start:>7.1f} {stats['perf/time_rollout']:>7.1f}{extra}", flush=True)
    return curve, initial


def _evaluator(agent: PPO, args: argparse.Namespace):
    """Mean VADER compound of the policy's completions of fixed prompts, with a fixed sampling seed.

    It samples in an env of its own whose reward is ``sentiment`` alone, so the person
    never sees (and never labels) these completions.
    """
    import torch

    from textenv.devices import autocast
    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import generate_episodes

    env = TextGenVectorEnv(args.eval_prompts, device=agent.device, autoreset_mode="Disabled",
                           model="smollm2-135m", prompts="movie-reviews", reward="sentiment", max_new_tokens=32)
    prompts = [env.task.prompts[i % len(env.task.prompts)] for i in range(args.eval_prompts)]

    def evaluate() -> float:
        agent.policy.eval()
        with torch.no_grad(), autocast(agent.device, agent.bf16):
            episodes = generate_episodes(agent.policy.lm, env, sampling=agent.sampling, seed=args.seed,
                                         prompts=prompts)
        return float(episodes.reward_terms["sentiment"].mean())

    return evaluate


def human_run(args: argparse.Namespace, reference: float | None) -> None:
    """The run with the simulated person at a pseudo-terminal; prints the efficiency figures."""
    k = args.time_scale
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    db = run_dir / f"feedback-{time.strftime('%Y%m%d-%H%M%S')}.db"
    probe: list[float] = []
    critic = VaderCritic()

    @textenv.reward(name="vader_probe")
    def vader_probe(completions):
        """Records each completion's VADER compound (the figure) and adds nothing to the reward."""
        probe.extend(critic.completion(text) for text in completions)
        return [0.0] * len(completions)

    with SimulatedHuman(critic, behaviour=HumanModel().scaled(k), seed=args.seed) as person:
        spec = (f"human(db='{db}', tty='{person.tty_path}', pace={args.pace * k:g}, min_delay={0.2 / k:g}, "
                f"max_delay={4.0 / k:g}, gap={0.5 / k:g}, linger={1.0 / k:g}) + vader_probe")
        presses, display = [], []
        t0 = time.perf_counter()

        def on_iteration(it: int) -> str:
            if args.attend and it + 1 == args.attend:
                person.judge = False  # the person walks away: Ĥ stands in from the next batch
            presses.append(person.presses)
            display.append(_display_seconds(db) * k / 60)
            return f"  {person.presses:>10} {display[-1]:>11.1f}"

        curve, initial = run(args, spec, label=f"human (simulated person at a pty, time x{k:g})", probe=probe,
                       on_iteration=on_iteration)
    print(f"human run: {presses[-1]} keypresses in {display[-1]:.1f} person-minutes of display, "
          f"{time.perf_counter() - t0:.0f} s wall; feedback store {db}")
    if reference is None:
        return
    goal = args.goal * reference
    smooth = [float(np.mean(curve[max(0, i - 2) : i + 1])) for i in range(len(curve))]
    reached = next((i for i, v in enumerate(smooth) if i >= 2 and v >= goal), None)
    print(f"goal: {args.goal:.0%} of the reference's {reference:+.3f} = {goal:+.3f} (eval, 3-iteration mean)")
    gain_goal = initial + args.goal * (reference - initial)
    gained = next((i for i, v in enumerate(smooth) if i >= 2 and v >= gain_goal), None)
    print(f"{args.goal:.0%} of the reference's gain ({initial:+.3f} -> {reference:+.3f}) = {gain_goal:+.3f}: "
          + (f"reached at iteration {gained + 1} after {presses[gained]} keypresses, "
             f"{display[gained]:.1f} person-minutes" if gained is not None else "not reached"))
    if reached is None:
        print(f"not reached in {len(curve)} iterations: best 3-iteration mean {max(smooth[2:], default=np.nan):+.3f} "
              f"after {presses[-1]} keypresses")
    else:
        print(f"reached at iteration {reached + 1} ({(reached + 1) * args.batch_size} episodes) after "
              f"{presses[reached]} keypresses, {display[reached]:.1f} person-minutes")


def _display_seconds(db: Path) -> float:
    """Seconds of streamed display so far: from each episode's first token to its end."""
    from textenv.plugins.human.store import FeedbackStore

    with FeedbackStore(db) as store:
        return float(sum(e["hidden_at"] - e["shown_at"][0] for e in store.episodes() if e["shown_at"]))


if __name__ == "__main__":
    main()
