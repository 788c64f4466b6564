"""Reward-model speed and accuracy with the MiniLM backbone on the CPU.

A scripted labeller stands in for people: VADER prefers the more positive of two
procedurally generated movie-review sentences (negations, mixed clauses and neutral
filler make some pairs hard; pairs VADER scores within 0.05 of each other are dropped
as ties). The script then

1. trains ``RewardModelConfig()``'s default backbone (all-MiniLM-L6-v2 with a scalar
   head) on the training pairs and prints training pairs/s (optimizer passes over
   pairs, i.e. pairs x epochs, per second of ``Trainer.train``);
2. prints the held-out pairwise accuracy (prompts not seen in training);
3. scores --score-n completions (ensemble mean, batches of --score-batch) and prints
   completions/s, the median of --repeats timed runs after one warm-up.

Run: ``.venv/bin/python benchmarks/reward_model.py`` (about 1-2 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time

import torch

from textenv.plugins.reward_model import PreferencePair, RewardModelConfig, train_reward_model

MOVIES = [
    "the heist film",
    "this western",
    "the sequel",
    "the musical",
    "this thriller",
    "the documentary",
    "the space opera",
    "this comedy",
    "the remake",
    "this war drama",
    "the animated feature",
    "the courtroom drama",
    "this horror film",
    "the biopic",
    "the road movie",
    "this romance",
]
OPENINGS = ["My review of {movie}:", "What I thought of {movie}:", "{movie}, in one line:"]
ASPECTS = [
    "acting",
    "script",
    "soundtrack",
    "pacing",
    "ending",
    "cinematography",
    "dialogue",
    "plot",
    "cast",
]
POSITIVE = [
    "wonderful",
    "brilliant",
    "moving",
    "delightful",
    "superb",
    "charming",
    "gripping",
    "great",
]
NEGATIVE = ["dull", "awful", "boring", "clumsy", "terrible", "lifeless", "painful", "weak"]
NEUTRAL = ["long", "loud", "unusual", "familiar", "quiet", "busy"]


def review_sentence(rng: random.Random) -> str:
    """One or two clauses about aspects of a film, each positive, negative, neutral or negated."""

    def clause() -> str:
        aspect = rng.choice(ASPECTS)
        kind = rng.random()
        if kind < 0.35:
            return f"the {aspect} is {rng.choice(POSITIVE)}"
        if kind < 0.7:
            return f"the {aspect} is {rng.choice(NEGATIVE)}"
        if kind < 0.85:
            return f"the {aspect} is not {rng.choice(POSITIVE + NEGATIVE)}"
        return f"the {aspect} is {rng.choice(NEUTRAL)}"

    if rng.random() < 0.5:
        return f" {clause().capitalize()}."
    return f" {clause().capitalize()}, {rng.choice(['but', 'and', 'while'])} {clause()}."


def vader_pairs(n: int, seed: int) -> list[PreferencePair]:
    """n pairs labelled by VADER: chosen is the more positive sentence (ties dropped)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer, rng, pairs = SentimentIntensityAnalyzer(), random.Random(seed), []
    while len(pairs) < n:
        prompt = rng.choice(OPENINGS).format(movie=rng.choice(MOVIES))
        a, b = review_sentence(rng), review_sentence(rng)
        sa, sb = (analyzer.polarity_scores(t)["compound"] for t in (a, b))
        if abs(sa - sb) >= 0.05:
            pairs.append(PreferencePair(prompt, a if sa > sb else b, b if sa > sb else a))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=600, help="pairs generated (train + held-out)")
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: RewardModelConfig's")
    parser.add_argument("--pooling", default="auto", choices=["auto", "mean", "head"])
    parser.add_argument("--freeze-backbone", action="store_true", help="train the scalar head only")
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision in training")
    parser.add_argument("--score-n", type=int, default=512, help="completions scored per timed run")
    parser.add_argument("--score-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default=None,
                        help="default: RewardModelConfig's (all-MiniLM-L6-v2); tiny-random: a smoke run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pairs = vader_pairs(args.pairs, args.seed)
    config = RewardModelConfig(
        **({"backbone": args.backbone} if args.backbone else {}),
        epochs=args.epochs,
        lr=args.lr,
        pooling=args.pooling,
        freeze_backbone=args.freeze_backbone,
        batch_size=args.batch_size,
        ensemble_size=args.ensemble,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        device="cpu",
        bf16=args.bf16,
    )
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; backbone {config.backbone}, pooling {config.pooling}"
        f"{', frozen' if config.freeze_backbone else ''}, lr {config.learning_rate:g}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as out:
        result = train_reward_model(pairs, out, config)
        meta = result.metadata
        model = result.model
        prompts = [p.prompt for p in pairs][: args.score_n // 2] * 2
        completions = [p.chosen for p in pairs][: args.score_n // 2] + [p.rejected for p in pairs][
            : args.score_n // 2
        ]
        model.score(prompts[: args.score_batch], completions[: args.score_batch])  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.score(prompts, completions, batch_size=args.score_batch)
            seconds.append(time.perf_counter() - start)
    figures = {
        "train_pairs": meta["data"]["train_pairs"],
        "eval_pairs": meta["data"]["eval_pairs"],
        "epochs": args.epochs,
        "train_seconds": meta["train"]["seconds"],
        "train_pairs_per_s": meta["train"]["pairs_per_second"],
        "heldout_accuracy": round(result.eval_accuracy, 4),
        "heldout_loss": round(result.eval_loss, 4),
        "score_completions_per_s": round(len(completions) / statistics.median(seconds), 1),
        "score_seconds": [round(s, 3) for s in seconds],
    }
    print(
        f"training: {figures['train_pairs']} pairs x {args.epochs:g} epochs "
        f"in {figures['train_seconds']:.1f} s "
        f"= {figures['train_pairs_per_s']:.1f} pairs/s (batch {args.batch_size})"
    )
    print(
        f"held-out pairwise accuracy {figures['heldout_accuracy']:.3f} "
        f"on {figures['eval_pairs']} pairs "
        f"(loss {figures['heldout_loss']:.4f})"
    )
    print(
        f"scoring: {len(completions)} completions, median {statistics.median(seconds):.2f} s "
        f"= {figures['score_completions_per_s']:.1f} completions/s (batch {args.score_batch})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
