"""``textenv rm train`` and ``textenv rm eval``: reward models from the command line."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator

from textenv.plugin_manager import hookimpl
from textenv.plugins.reward_model.config import DEFAULT_BACKBONE, POOLINGS, RewardModelConfig, RewardModelError
from textenv.plugins.reward_model.data import PreferenceDataError


@hookimpl
def textenv_add_commands(subparsers):
    """Add ``textenv rm`` with its ``train`` and ``eval`` subcommands."""
    rm = subparsers.add_parser("rm", help="train and evaluate reward models on human preferences")
    rm_sub = rm.add_subparsers(dest="rm_command", required=True)
    defaults = RewardModelConfig()

    p = rm_sub.add_parser(
        "train",
        help="train a reward model on preference pairs (JSONL: prompt, chosen, rejected)",
        description="Train a Bradley-Terry reward model (or an ensemble) and save it as a "
        "directory. "
        "DATA is JSONL with prompt/chosen/rejected[/margin] or prompt/completions/ranking "
        "(indices best first) per line.",
    )
    p.add_argument("data", metavar="DATA", help="preference JSONL file")
    p.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="directory to save the model in"
    )
    p.add_argument(
        "--backbone",
        default=defaults.backbone,
        help=f"{DEFAULT_BACKBONE} (default), smollm2-135m, tiny-random, or a model directory",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=defaults.ensemble_size,
        metavar="K",
        help="members, each trained on a bootstrap resample (default 1)",
    )
    p.add_argument("--epochs", type=float, default=defaults.epochs)
    p.add_argument(
        "--lr", type=float, default=defaults.lr, help="learning rate (default 1e-4; 1e-2 with --freeze-backbone)"
    )
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default=defaults.pooling,
        help="mean: a head on the mean token state; head: the backbone's own; auto (default): mean for "
        "sentence-transformers backbones",
    )
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train the scalar head only, on the backbone's fixed features (faster; learns less)",
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pairs per step")
    p.add_argument(
        "--max-length", type=int, default=defaults.max_length, help="longest input in tokens"
    )
    p.add_argument(
        "--center-rewards",
        type=float,
        default=defaults.center_rewards_coefficient,
        metavar="COEF",
        help="weight of the reward-centering penalty (default 0: off)",
    )
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=defaults.eval_fraction,
        help="share of pairs held out for the accuracy (default 0.1)",
    )
    p.add_argument(
        "--device", default=None, help="cpu to stay on the CPU (default: CUDA if available)"
    )
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--overwrite", action="store_true", help="replace a reward model saved in DIR")
    p.set_defaults(run=_train)

    p = rm_sub.add_parser(
        "eval", help="pairwise accuracy and loss of a reward model on preference pairs"
    )
    p.add_argument("model", metavar="MODEL", help="reward model directory (from rm train)")
    p.add_argument("data", metavar="DATA", help="preference JSONL file")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available)")
    p.set_defaults(run=_eval)
    return [PreferenceDataError, RewardModelError]


def _train(args: argparse.Namespace) -> int:
    from textenv.plugins.reward_model.data import read_preferences
    from textenv.plugins.reward_model.trainer import LOSS_CURVE_FILENAME, train_reward_model

    config = RewardModelConfig(
        backbone=args.backbone,
        ensemble_size=args.ensemble,
        epochs=args.epochs,
        lr=args.lr,
        pooling=args.pooling,
        freeze_backbone=args.freeze_backbone,
        batch_size=args.batch_size,
        max_length=args.max_length,
        center_rewards_coefficient=args.center_rewards,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
    )
    with _plain_warnings():
        data = read_preferences(args.data)
        print(f"loaded {data.summary()}", flush=True)
        print(f"training {config.ensemble_size} member(s) on {config.backbone} ...", flush=True)
        result = train_reward_model(data, args.output, config, overwrite=args.overwrite)
    split = result.metadata["data"]
    train = result.metadata["train"]
    print(
        f"trained on {split['train_pairs']} pairs in {train['seconds']:.1f} s "
        f"({train['pairs_per_second']:.1f} pairs/s)"
    )
    if result.eval_accuracy is None:
        print("no held-out pairs (--eval-fraction 0)")
    else:
        evaluation = result.metadata["eval"]
        print(
            f"held-out pairwise accuracy {result.eval_accuracy:.3f} on {split['eval_pairs']} pairs "
            f"(split by {split['split']}), loss {result.eval_loss:.4f}"
        )
        if "member_accuracy" in evaluation:
            members = ", ".join(f"{a:.3f}" for a in evaluation["member_accuracy"])
            print(
                f"members' accuracy {members}; mean disagreement {evaluation['disagreement']:.4f}"
            )
    print(f"saved {result.path} (loss curve: {result.path / LOSS_CURVE_FILENAME})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from textenv.plugins.reward_model.data import read_preferences
    from textenv.plugins.reward_model.model import evaluate_reward_model, load_reward_model

    with _plain_warnings():
        data = read_preferences(args.data)
        print(f"loaded {data.summary()}", flush=True)
        model = load_reward_model(args.model, device=args.device)
        metrics = evaluate_reward_model(model, data.pairs, batch_size=args.batch_size)
    print(
        f"pairwise accuracy {metrics['accuracy']:.3f} on {metrics['n_pairs']} pairs, "
        f"loss {metrics['loss']:.4f}"
    )
    if "member_accuracy" in metrics:
        members = ", ".join(f"{a:.3f}" for a in metrics["member_accuracy"])
        print(f"members' accuracy {members}; mean disagreement {metrics['disagreement']:.4f}")
    return 0


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """Show warnings (truncation, skipped pairs) as one ``textenv: warning:`` line each."""
    with warnings.catch_warnings():

        def show(message, category, filename, lineno, file=None, line=None):
            print(f"textenv: warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        yield
