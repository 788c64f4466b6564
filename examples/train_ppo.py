"""Train a language model with PPO on your own reward, in ten lines of user code.

Run it::

    python examples/train_ppo.py                          # SmolLM2-135M: a few minutes on a CPU
    python examples/train_ppo.py --model tiny-random --episodes 16 --max-new-tokens 4   # seconds
"""

import argparse

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny-random, a path or hub id")
parser.add_argument("--episodes", type=int, default=64, help="episodes to train on (16 per iteration)")
parser.add_argument("--max-new-tokens", type=int, default=24)
args = parser.parse_args()

# --- the user code: ten lines
import gymnasium as gym  # noqa: E402
import textenv  # noqa: E402
from textenv.agents import PPO  # noqa: E402

@textenv.reward
def enthusiasm(completions):
    return [min(c.count("!"), 3) / 3 for c in completions]

env = gym.make("textenv/TextGen-v0", model=args.model, reward="sentiment + enthusiasm", max_new_tokens=args.max_new_tokens)
agent = PPO(env, learning_rate=5e-5, run_dir="runs/train_ppo", overwrite=True).learn(total_episodes=args.episodes)  # a rerun replaces the last run
print(agent.generate(["This movie was", "The acting in this movie"]))
