"""Your own reward source in a few lines: one decorator, then use its name in a reward spec.

Run it::

    python examples/custom_reward.py                       # SmolLM2-135M, movie-review openings
    python examples/custom_reward.py --model tiny-random   # seconds, for a smoke test
"""

import argparse

import textenv
from textenv.devices import default_device
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.generation import SamplingConfig, generate_episodes
from textenv.models import load_causal_lm


@textenv.reward
def exclamations(completions):
    """Up to 1 for excitement: a third of a point per '!' (three at most)."""
    return [min(c.count("!"), 3) / 3 for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="smollm2-135m, tiny-random, a path or hub id"
    )
    parser.add_argument(
        "--num-prompts", type=int, default=4, help="episodes generated side by side"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    device = default_device()
    model = load_causal_lm(args.model, device=device)
    env = TextGenVectorEnv(
        args.num_prompts,
        device=device,
        autoreset_mode="Disabled",  # generate_episodes runs one episode per row
        model=args.model,
        prompts="movie-reviews",
        reward="sentiment + 0.5*exclamations",  # a built-in source next to ours
        max_new_tokens=args.max_new_tokens,
    )
    episodes = generate_episodes(model, env, sampling=SamplingConfig(temperature=0.7), seed=0)
    for i, (prompt, completion) in enumerate(zip(episodes.prompts, episodes.completions)):
        terms = ", ".join(
            f"{name}={values[i]:+.3f}" for name, values in episodes.reward_terms.items()
        )
        print(f"{prompt}\u27e6{completion}\u27e7\n    reward {episodes.rewards[i]:+.3f} ({terms})")


if __name__ == "__main__":
    main()
