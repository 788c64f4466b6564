"""Training a reward model (or an ensemble) on preference pairs with transformers' Trainer."""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from textenv.plugins.reward_model.config import RewardModelConfig, RewardModelError
from textenv.plugins.reward_model.data import PreferenceData, PreferencePair, read_preferences
from textenv.plugins.reward_model.encoding import TruncationWarning, encode, input_limit, pad
from textenv.plugins.reward_model.loss import bradley_terry_loss
from textenv.plugins.reward_model.model import (
    METADATA_FILENAME,
    RewardModel,
    evaluate_reward_model,
    load_backbone,
)

LOSS_CURVE_FILENAME = "loss_curve.png"
"""The training-loss plot written beside the members."""

NORMALIZATION_SAMPLE = 512
"""Training pairs (at most) whose completions give the saved normalization statistics."""

MIN_PROMPTS_FOR_PROMPT_SPLIT = 5
"""Hold out whole prompts only when there are at least this many distinct ones."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_reward_model` produced.

    Attributes:
        path: the saved reward model directory.
        model: the trained :class:`RewardModel`, ready to score.
        eval_accuracy: held-out pairwise accuracy of the ensemble mean (None: no held-out pairs).
        eval_loss: held-out Bradley-Terry loss (None without a held-out set).
        losses: per member, the training loss at each optimizer step.
        metadata: everything written to ``reward_model.json``.
    """

    path: Path
    model: RewardModel
    eval_accuracy: float | None
    eval_loss: float | None
    losses: list[list[float]]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class PairCollator:
    """Pads encoded pairs into one (2B, T) batch: the B chosen rows, then the B rejected."""

    tokenizer: Any

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad(
            self.tokenizer, [f["chosen"] for f in features] + [f["rejected"] for f in features]
        )
        batch["margin"] = torch.tensor([f["margin"] for f in features], dtype=torch.float32)  # (B,)
        return batch


class PairwiseRewardTrainer(Trainer):
    """transformers' Trainer with the Bradley-Terry loss over (chosen, rejected) batches."""

    def __init__(self, *args: Any, center_rewards_coefficient: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.center_rewards_coefficient = center_rewards_coefficient

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        margin = inputs["margin"]  # (B,)
        rewards = model(**{k: v for k, v in inputs.items() if k != "margin"}).logits[:, 0]  # (2B,)
        chosen, rejected = rewards.float().chunk(2)  # (B,) each
        loss = bradley_terry_loss(
            chosen, rejected, margin, center_rewards_coefficient=self.center_rewards_coefficient
        )
        if return_outputs:
            return loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}
        return loss


class LossProgress(ProgressCallback):
    """Trainer's progress bar with the latest loss beside it, not one printed line per log."""

    def __init__(self, description: str):
        super().__init__()
        self.description = description

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(
                total=state.max_steps, desc=self.description, dynamic_ncols=True
            )
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")


def train_reward_model(
    pairs: Any,
    output_dir: str | Path,
    config: RewardModelConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a reward model on preference pairs and save it.

    Holds out ``config.eval_fraction`` of the pairs, trains ``config.ensemble_size``
    members (each on a bootstrap resample when there are several), measures the
    ensemble's held-out pairwise accuracy, and saves the members, metadata and loss curve.

    Args:
        pairs: a list of :class:`PreferencePair`, a :class:`PreferenceData`, or anything
            :func:`read_preferences` reads (a JSONL path, a ``datasets.Dataset``).
        output_dir: where to save; created if missing.
        config: the options (the defaults when None).
        overwrite: replace a reward model already saved in ``output_dir``.
        progress: show a progress bar per member.

    Returns:
        The :class:`TrainResult`.

    Raises:
        PreferenceDataError: the pairs cannot be read or none is usable.
        RewardModelError: ``output_dir`` holds other files, or the backbone cannot be loaded.
    """
    config = config or RewardModelConfig()
    data = pairs if isinstance(pairs, PreferenceData) else read_preferences(pairs)
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, overwrite)
    train_pairs, eval_pairs, split = split_pairs(data.pairs, config.eval_fraction, seed=config.seed)

    set_seed(config.seed)
    model, tokenizer = load_backbone(config.backbone, config.pooling)
    max_length = input_limit(model, tokenizer, config.max_length)
    examples = _encode_pairs(tokenizer, train_pairs, max_length)

    members, losses = [], []
    start = time.perf_counter()
    for k in range(config.ensemble_size):
        if k:  # the first member's model is already loaded, seeded like the others
            set_seed(config.seed + k)
            model, _ = load_backbone(config.backbone, config.pooling)
        rows = _bootstrap(len(examples), seed=config.seed + k) if config.ensemble_size > 1 else None
        member_examples = examples if rows is None else [examples[i] for i in rows]
        description = f"member {k + 1}/{config.ensemble_size}"
        losses.append(
            _train_member(model, tokenizer, member_examples, config, k, description, progress)
        )
        members.append(model)
    seconds = time.perf_counter() - start

    reward_model = RewardModel(members, tokenizer, device=config.device, max_length=max_length)
    with warnings.catch_warnings():  # training has warned once already
        warnings.simplefilter("ignore", TruncationWarning)
        evaluation = _evaluate(reward_model, eval_pairs)
        sample = train_pairs[:NORMALIZATION_SAMPLE]
        scores = reward_model.score(
            [p.prompt for p in sample] * 2,
            [p.chosen for p in sample] + [p.rejected for p in sample],
        )  # (2S,)
    reward_model.metadata = {
        "backbone": config.backbone,
        "ensemble_size": config.ensemble_size,
        "config": dataclasses.asdict(config),
        "normalization": {
            "mean": float(scores.mean()),
            "std": float(scores.std()),
            "n": len(scores),
        },
        "eval": evaluation,
        "data": {
            "source": data.source,
            "records": data.records,
            "pairs": len(data.pairs),
            "skipped_identical": data.skipped_identical,
            "train_pairs": len(train_pairs),
            "eval_pairs": len(eval_pairs),
            "split": split,
        },
        "train": {
            "seconds": round(seconds, 2),
            "pairs_per_second": round(
                len(examples) * config.epochs * config.ensemble_size / seconds, 2
            ),
            "final_loss": [member_losses[-1] for member_losses in losses if member_losses],
        },
    }
    _remove_old_model(output_dir)  # only now: a failed run leaves the earlier model in place
    reward_model.save(output_dir)
    plot_loss_curve(losses, output_dir / LOSS_CURVE_FILENAME)
    return TrainResult(
        path=output_dir,
        model=reward_model,
        eval_accuracy=evaluation.get("accuracy"),
        eval_loss=evaluation.get("loss"),
        losses=losses,
        metadata=reward_model.metadata,
    )


def split_pairs(
    pairs: Sequence[PreferencePair], eval_fraction: float, *, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair], str]:
    """Hold out about ``eval_fraction`` of the pairs.

    Whole prompts are held out when there are at least :data:`MIN_PROMPTS_FOR_PROMPT_SPLIT`
    distinct ones (the pairs of a K-wise ranking share completions, so splitting them would
    leak); otherwise single pairs. At least one pair is held out, and one kept, when
    ``eval_fraction > 0`` and there are two or more pairs.

    Returns:
        ``(train, held_out, "prompt" | "pair" | "none")``.

    Raises:
        RewardModelError: a held-out set is wanted but there is a single pair.
    """
    if eval_fraction <= 0:
        return list(pairs), [], "none"
    if len(pairs) < 2:
        raise RewardModelError(
            f"{len(pairs)} preference pair cannot be split into training and held-out pairs; "
            "give more pairs or set the eval fraction to 0"
        )
    rng = random.Random(seed)
    prompts = sorted({p.prompt for p in pairs})
    if len(prompts) >= MIN_PROMPTS_FOR_PROMPT_SPLIT:
        rng.shuffle(prompts)
        target, held = eval_fraction * len(pairs), set()
        counts = {prompt: 0 for prompt in prompts}
        for p in pairs:
            counts[p.prompt] += 1
        for prompt in prompts[:-1]:  # keep at least one prompt for training
            if sum(counts[h] for h in held) >= target:
                break
            held.add(prompt)
        return (
            [p for p in pairs if p.prompt not in held],
            [p for p in pairs if p.prompt in held],
            "prompt",
        )
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_eval = min(len(pairs) - 1, max(1, round(eval_fraction * len(pairs))))
    held_rows = set(order[:n_eval])
    return (
        [p for i, p in enumerate(pairs) if i not in held_rows],
        [p for i, p in enumerate(pairs) if i in held_rows],
        "pair",
    )


def plot_loss_curve(losses: Sequence[Sequence[float]], path: str | Path) -> Path:
    """Plot each member's training loss per optimizer step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for k, member_losses in enumerate(losses):
        ax.plot(range(1, len(member_losses) + 1), member_losses, alpha=0.8, label=f"member {k}")
    ax.axhline(np.log(2), color="gray", linestyle=":", label="chance (ln 2)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("Bradley-Terry loss")
    ax.set_title("reward model training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _train_member(
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    config: RewardModelConfig,
    k: int,
    description: str,
    progress: bool,
) -> list[float]:
    """Train one member in place (its head alone with ``freeze_backbone``); return its loss at each step."""
    if config.freeze_backbone:
        model.base_model.requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="textenv-rm-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,  # nothing is saved there (save_strategy="no")
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warmup_steps=0.1,
            lr_scheduler_type="linear",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=config.seed + k,
            data_seed=config.seed + k,
            use_cpu=config.device == "cpu",
            bf16=config.bf16,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        trainer = PairwiseRewardTrainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=PairCollator(tokenizer),
            center_rewards_coefficient=config.center_rewards_coefficient,
        )
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        if progress:
            trainer.add_callback(LossProgress(description))
        trainer.train()
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]


def _encode_pairs(
    tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int
) -> list[dict[str, Any]]:
    """Tokenize every pair once: {"chosen": features, "rejected": features, "margin": float}."""
    prompts = [p.prompt for p in pairs]
    features = encode(
        tokenizer, prompts * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], max_length
    )
    n = len(pairs)
    return [
        {"chosen": features[i], "rejected": features[n + i], "margin": pairs[i].margin}
        for i in range(n)
    ]


def _bootstrap(n: int, *, seed: int) -> list[int]:
    """n row indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=n).tolist()


def _evaluate(model: RewardModel, pairs: list[PreferencePair]) -> dict[str, Any]:
    """The ensemble's held-out figures (``{"n_pairs": 0}`` without held-out pairs)."""
    return evaluate_reward_model(model, pairs) if pairs else {"n_pairs": 0}


def _check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a ``path`` with other files, or with a reward model unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise RewardModelError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not (path / METADATA_FILENAME).is_file():
            raise RewardModelError(
                f"{path} is not empty and holds no reward model; choose another directory"
            )
        if not overwrite:
            raise RewardModelError(
                f"{path} already holds a reward model; pass overwrite=True (--overwrite)"
            )


def _remove_old_model(path: Path) -> None:
    """Delete an earlier reward model's members and metadata from ``path`` (nothing else)."""
    for old in path.glob("member-*"):
        shutil.rmtree(old)
    (path / METADATA_FILENAME).unlink(missing_ok=True)
