"""The classic RLHF pipeline end to end, in small sizes: SFT -> reward model -> PPO.

1. Supervised fine-tuning of the LM on human-written demonstrations (positive movie
   reviews shipped in ``textenv/data/demonstrations_movie_reviews.jsonl``).
2. The SFT model writes K completions per prompt; a simulated labeller (VADER's
   sentiment, a scripted critic standing in for people) ranks them; every two
   completions it scores clearly apart make a preference pair.
3. A reward model (the MiniLM encoder with a scalar head) learns the pairs.
4. PPO fine-tunes the SFT model against the reward model, with a KL penalty to the
   SFT model as the reference.

At the end the script prints the reward model's held-out pairwise accuracy and the
labeller's mean score of the pretrained, SFT and PPO models' completions (the same
prompts, K samples each): the labeller never gives PPO a reward, only the reward
model it taught does.

Run it::

    python examples/rlhf_pipeline.py           # SmolLM2-135M + MiniLM: minutes on a CPU
    python examples/rlhf_pipeline.py --tiny    # tiny random models: seconds, a smoke test
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

import textenv
from textenv.agents import PPO
from textenv.agents.sft import SFTConfig, train_sft
from textenv.devices import autocast, default_device, use_bf16
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.generation import Episodes, SamplingConfig, generate_episodes
from textenv.models import load_causal_lm
from textenv.plugins.reward_model import PreferencePair, RewardModelConfig, TrainResult, train_reward_model
from textenv.prompts import load_prompts

DEMONSTRATIONS = str(files("textenv.data") / "demonstrations_movie_reviews.jsonl")


@textenv.reward
def letter_share(completions):
    """The share of ASCII letters in a completion: the --tiny labeller (random bytes vary on it)."""
    return [sum(c.isascii() and c.isalpha() for c in t) / max(len(t), 1) for t in completions]


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How big each step is."""

    model: str
    """The pretrained LM."""
    reward_backbone: str
    """The reward model's backbone."""
    labeller: str
    """Reward spec of the simulated labeller."""
    num_prompts: int
    """Prompts of the movie-review set used for sampling, PPO and evaluation."""
    samples_per_prompt: int
    """K completions the labeller ranks per prompt."""
    min_gap: float
    """Labeller scores closer than this are a tie: no pair."""
    max_new_tokens: int
    """Completion length limit, when sampling and in PPO."""
    sft_epochs: float
    """Passes over the demonstrations."""
    sft_lr: float
    """SFT learning rate."""
    rm_epochs: float
    """Passes over the preference pairs."""
    ppo_episodes: int
    """Episodes PPO trains on."""
    ppo_batch_size: int
    """Episodes per PPO iteration (4 samples per prompt, RLOO baselines)."""
    ppo_lr: float
    """PPO learning rate."""


FULL = Sizes(
    model="smollm2-135m", reward_backbone="all-minilm-l6-v2", labeller="sentiment",
    num_prompts=48, samples_per_prompt=4, min_gap=0.1, max_new_tokens=24,
    sft_epochs=3, sft_lr=5e-5, rm_epochs=3, ppo_episodes=128, ppo_batch_size=16, ppo_lr=3e-5,
)
TINY = Sizes(
    model="tiny-random", reward_backbone="tiny-random", labeller="letter_share",
    num_prompts=8, samples_per_prompt=4, min_gap=0.01, max_new_tokens=8,
    sft_epochs=1, sft_lr=1e-3, rm_epochs=1, ppo_episodes=16, ppo_batch_size=8, ppo_lr=1e-4,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random models: seconds")
    parser.add_argument("--output-dir", default="runs/rlhf_pipeline", help="where runs are saved")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes, out, start = (TINY if args.tiny else FULL), Path(args.output_dir), time.perf_counter()
    if args.tiny:
        torch.set_num_threads(1)  # tiny models run fastest on one thread
    prompts = load_prompts("movie-reviews")[: sizes.num_prompts]

    pretrained = sample(load_causal_lm(sizes.model), sizes, prompts, args.seed, "pretrained")
    sft_dir = supervised_fine_tuning(sizes, out / "sft", args.seed)
    sft = sample(load_causal_lm(str(sft_dir)), sizes, prompts, args.seed, "SFT")
    pairs = labeller_pairs(sft, sizes)
    rm = reward_model(pairs, sizes, out / "reward_model", args.seed)
    agent = ppo(sft_dir, rm, sizes, prompts, out / "ppo", args.seed)
    after = sample(agent.policy.lm, sizes, prompts, args.seed, "after PPO")
    report(sizes, pairs, rm, pretrained, sft, after)
    print(f"total time {time.perf_counter() - start:.0f} s; everything is in {out}")


def sample(model, sizes: Sizes, prompts: list[str], seed: int, name: str) -> Episodes:
    """K completions per prompt from ``model``, scored by the labeller (the env's reward)."""
    k = sizes.samples_per_prompt
    print(f"      sampling {k} completions for each of {len(prompts)} prompts ({name})", flush=True)
    env = TextGenVectorEnv(
        len(prompts) * k, device=default_device(), autoreset_mode="Disabled", model=sizes.model,
        prompts=prompts, reward=sizes.labeller, max_new_tokens=sizes.max_new_tokens,
    )
    rows = [p for p in prompts for _ in range(k)]  # each prompt's K rows side by side
    sampling = SamplingConfig(temperature=1.0)
    with autocast(env.device, use_bf16(env.device, "auto")):  # as PPO's own rollouts
        return generate_episodes(
            model.to(env.device), env, sampling=sampling, seed=seed, prompts=rows, progress=True
        )


def supervised_fine_tuning(sizes: Sizes, output_dir: Path, seed: int) -> Path:
    """Step 1: fine-tune the pretrained LM on the demonstrations."""
    print(f"[1/4] SFT of {sizes.model} on {DEMONSTRATIONS}", flush=True)
    config = SFTConfig(epochs=sizes.sft_epochs, learning_rate=sizes.sft_lr, seed=seed)
    result = train_sft(DEMONSTRATIONS, output_dir, model=sizes.model, config=config, overwrite=True)
    first, last = result.losses[0][1], result.final_loss
    print(f"      loss {first:.3f} -> {last:.3f} in {result.seconds:.0f} s", flush=True)
    return result.path


def labeller_pairs(episodes: Episodes, sizes: Sizes) -> list[PreferencePair]:
    """Step 2: the labeller ranks each prompt's K completions; two it scores apart make a pair."""
    k, pairs = sizes.samples_per_prompt, []
    for start in range(0, len(episodes.prompts), k):
        texts, scores = episodes.completions[start : start + k], episodes.rewards[start : start + k]
        ranking = np.argsort(-scores, kind="stable")  # best first
        pairs += [
            PreferencePair(episodes.prompts[start], texts[better], texts[worse])
            for better, worse in itertools.combinations(ranking, 2)
            if scores[better] - scores[worse] >= sizes.min_gap and texts[better] != texts[worse]
        ]
    print(f"[2/4] the labeller ranked {k} completions for each of {len(episodes.prompts) // k} "
          f"prompts: {len(pairs)} preference pairs (ties dropped)", flush=True)
    return pairs


def reward_model(pairs: list[PreferencePair], sizes: Sizes, output_dir: Path, seed: int):
    """Step 3: a Bradley-Terry reward model on the pairs, a fifth of the prompts held out."""
    print(f"[3/4] reward model on {sizes.reward_backbone}", flush=True)
    config = RewardModelConfig(
        backbone=sizes.reward_backbone, epochs=sizes.rm_epochs, eval_fraction=0.2, seed=seed
    )
    return train_reward_model(pairs, output_dir, config, overwrite=True)


def ppo(sft_dir: Path, rm: TrainResult, sizes: Sizes, prompts, run_dir: Path, seed: int) -> PPO:
    """Step 4: PPO from the SFT model against the reward model, KL to the SFT model."""
    print(f"[4/4] PPO for {sizes.ppo_episodes} episodes against the reward model", flush=True)
    env = TextGenVectorEnv(
        1, model=str(sft_dir), prompts=prompts, max_new_tokens=sizes.max_new_tokens,
        reward=f"reward_model(path={str(rm.path)!r}, standardize=True)",
    )
    agent = PPO(
        env, batch_size=sizes.ppo_batch_size, mini_batch_size=sizes.ppo_batch_size // 2,
        advantage="rloo", group_size=4, learning_rate=sizes.ppo_lr, seed=seed, run_dir=str(run_dir),
        overwrite=True,  # a rerun of the pipeline replaces its PPO run, as its SFT and reward model
    )
    return agent.learn(total_episodes=sizes.ppo_episodes)


def report(sizes: Sizes, pairs, rm: TrainResult, pretrained, sft, after) -> None:
    """The figures: the reward model's held-out accuracy, the labeller's and the RM's means."""
    held_out = rm.metadata["data"]["eval_pairs"]
    print(f"\nreward model: {len(pairs)} preference pairs from the labeller; "
          f"held-out pairwise accuracy {rm.eval_accuracy:.3f} ({held_out} pairs)")
    means = [e.rewards.mean() for e in (pretrained, sft, after)]
    print(f"labeller ({sizes.labeller}) mean over {len(sft.prompts)} completions: pretrained "
          f"{means[0]:+.3f}, SFT (before PPO) {means[1]:+.3f}, after PPO {means[2]:+.3f}")
    rm_sft, rm_after = (rm.model.score(e.prompts, e.completions).mean() for e in (sft, after))
    print(f"reward model mean: before PPO {rm_sft:+.3f}, after PPO {rm_after:+.3f}")
    k = sizes.samples_per_prompt
    for i in range(0, 3 * k, k):  # three prompts, the first sample of each
        print(f"  {sft.prompts[i]!r}\n    SFT: {sft.completions[i]!r}")
        print(f"    PPO: {after.completions[i]!r}")


if __name__ == "__main__":
    main()
