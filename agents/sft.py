"""Supervised fine-tuning (SFT) of a causal LM on demonstrations, the first step of RLHF.

A demonstration is a prompt and the completion a person wrote for it. The model is
trained to continue each prompt with its completion (then EOS); the loss counts the
completion tokens only: prompt and padding positions carry the label -100, which the
model's cross-entropy ignores.

The prompt is tokenized exactly as the env tokenizes it (no special tokens added,
optionally wrapped in the chat template as a user turn), so the SFT model sees the same
token sequence at PPO time as in training.

Example:
    >>> result = train_sft("demos.jsonl", "runs/sft", model="smollm2-135m")
    >>> model = load_causal_lm(str(result.path))
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from textenv.devices import resolve_device, use_bf16
from textenv.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer

METADATA_FILENAME = "textenv-sft.json"
"""Written into the output directory: base model, options, losses."""

IGNORE_INDEX = -100
"""The label of positions that take no loss (prompt and padding)."""


class SFTDataError(ValueError):
    """Demonstrations could not be used; the message gives the file and line, or the bad item."""


class SFTOutputError(ValueError):
    """The output directory cannot take the model: a file, not writable, or holding something else."""


@dataclass(frozen=True)
class Demonstration:
    """One human-written example: the prompt and the completion to imitate."""

    prompt: str
    completion: str


@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Options of :func:`train_sft`."""

    epochs: float = 3.0
    """Passes over the demonstrations."""
    learning_rate: float = 5e-5
    """Peak learning rate of AdamW (linear decay to 0)."""
    batch_size: int = 8
    """Demonstrations per optimizer step."""
    max_length: int = 256
    """Longest tokenized prompt + completion; longer ones lose the prompt's start, then the
    completion's end (one warning with the count)."""
    chat_template: bool = False
    """Wrap each prompt in the tokenizer's chat template as a user turn (as the env's option)."""
    seed: int = 0
    """Seeds the data order."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` ..."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 mixed precision where the hardware has fast bf16 (as PPO); fp32 weights."""
    logging_steps: int = 0
    """Log the loss every this many steps (0: about 20 times over the run)."""

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {self.max_length}")


@dataclass
class SFTResult:
    """What :func:`train_sft` did.

    Attributes:
        path: the saved model directory (``load_causal_lm(str(path))`` loads it).
        losses: (step, mean loss since the previous log) pairs, in order.
        num_examples: demonstrations trained on.
        num_truncated: how many of them were cut to ``max_length``.
        num_completion_tokens: tokens that took loss in one epoch (EOS included).
        seconds: training time.
    """

    path: Path
    losses: list[tuple[int, float]] = field(default_factory=list)
    num_examples: int = 0
    num_truncated: int = 0
    num_completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """The last logged loss (NaN if nothing was logged)."""
        return self.losses[-1][1] if self.losses else math.nan


# ------------------------------------------------------------------------- data


def load_demonstrations(
    source: str | os.PathLike | Iterable[Mapping[str, Any]],
) -> list[Demonstration]:
    """Read demonstrations from a JSONL file or an iterable of mappings.

    Args:
        source: a JSONL file with one ``{"prompt": ..., "completion": ...}`` object per
            line (blank lines skipped, other fields ignored), or any iterable of
            mappings with those keys, such as a ``datasets.Dataset``.

    Returns:
        The demonstrations, in order.

    Raises:
        SFTDataError: a missing file, a line that is not a JSON object (``PATH:LINE``),
            a missing or non-string field, an empty prompt or completion, or no
            demonstrations at all.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise SFTDataError(f"{path}: no such demonstrations file")
        demos = [_demonstration(record, f"{path}:{lineno}") for lineno, record in _read_jsonl(path)]
        where = str(path)
    else:
        demos = [_demonstration(record, f"demonstration #{i}") for i, record in enumerate(source)]
        where = "the given records"
    if not demos:
        raise SFTDataError(f"{where}: no demonstrations")
    return demos


def _read_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for each non-blank line."""
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SFTDataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from None
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise SFTDataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def _demonstration(record: Any, where: str) -> Demonstration:
    """Check one record and turn it into a :class:`Demonstration`; ``where`` prefixes errors."""
    if not isinstance(record, Mapping):
        raise SFTDataError(
            f'{where}: expected an object {{"prompt": ..., "completion": ...}}, '
            f"got {type(record).__name__}"
        )
    missing = [key for key in ("prompt", "completion") if key not in record]
    if missing:
        raise SFTDataError(f"{where}: missing field {' and '.join(map(repr, missing))}")
    for key in ("prompt", "completion"):
        value = record[key]
        if not isinstance(value, str):
            raise SFTDataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise SFTDataError(f"{where}: empty {key}")
    return Demonstration(record["prompt"], record["completion"])


# ------------------------------------------------------------------- tokenizing


def encode_demonstrations(
    demos: list[Demonstration], tokenizer: Any, *, max_length: int, chat_template: bool = False
) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenize demonstrations into training features with completion-only labels.

    Each feature is prompt ids then completion ids then EOS; ``labels`` repeats the
    completion ids and EOS and holds :data:`IGNORE_INDEX` over the prompt. Too-long
    examples lose the prompt's start (down to half of ``max_length``), then the
    completion's end; one warning reports how many.

    Args:
        demos: the demonstrations.
        tokenizer: the model's tokenizer (it must have an EOS token).
        max_length: the longest feature, in tokens.
        chat_template: wrap each prompt in the tokenizer's chat template as a user turn.

    Returns:
        The features (``input_ids``, ``attention_mask``, ``labels``; unpadded lists)
        and the number of truncated examples.

    Raises:
        SFTDataError: the tokenizer has no chat template (with ``chat_template``) or no EOS.
    """
    if tokenizer.eos_token_id is None:
        raise SFTDataError("the tokenizer has no EOS token to end completions with")
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise SFTDataError(
            "the model's tokenizer has no chat template: train without chat_template"
        )
    prompts = [d.prompt for d in demos]
    if chat_template:
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer([d.completion for d in demos], add_special_tokens=False)["input_ids"]
    features, truncated = [], 0
    for prompt, completion in zip(prompt_ids, completion_ids):
        prompt, completion, cut = _truncate(
            prompt, completion + [tokenizer.eos_token_id], max_length
        )
        truncated += cut
        features.append(
            {
                "input_ids": prompt + completion,
                "attention_mask": [1] * (len(prompt) + len(completion)),
                "labels": [IGNORE_INDEX] * len(prompt) + completion,
            }
        )
    if truncated:
        warnings.warn(
            f"{truncated} of {len(demos)} demonstrations are longer than max_length={max_length} "
            "tokens: truncated (the prompt's start, then the completion's end)",
            stacklevel=2,
        )
    return features, truncated


def _truncate(
    prompt: list[int], completion: list[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """Fit prompt + completion into ``max_length``: the prompt keeps at least half, its end."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion, False
    keep_prompt = min(len(prompt), max(max_length // 2, max_length - len(completion)))
    prompt = prompt[len(prompt) - keep_prompt :]
    return prompt, completion[: max_length - len(prompt)], True


def data_collator(tokenizer: Any):
    """Pads features on the right: ids with the pad token, mask with 0, labels with -100.

    ``DataCollatorForLanguageModeling`` would rebuild the labels from ``input_ids`` and
    mask every pad id, which is EOS for many models (SmolLM2 included), so the model would
    never learn to stop. transformers' sequence-to-sequence collator pads labels we built.
    It sets ``tokenizer.padding_side`` to ``"right"``.
    """
    from transformers import DataCollatorForSeq2Seq

    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)


@torch.no_grad()
def completion_nll(
    model: torch.nn.Module,
    tokenizer: Any,
    demos: list[Demonstration],
    *,
    max_length: int = 256,
    chat_template: bool = False,
    batch_size: int = 8,
) -> float:
    """Mean negative log-likelihood per completion token (EOS included) of demonstrations.

    Args:
        model: a causal LM (its device is used).
        tokenizer: its tokenizer.
        demos: the demonstrations.
        max_length: as in :class:`SFTConfig`.
        chat_template: as in :class:`SFTConfig`.
        batch_size: demonstrations per forward pass.

    Returns:
        The mean over all completion tokens, in nats.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation was reported when training
        features, _ = encode_demonstrations(
            demos, tokenizer, max_length=max_length, chat_template=chat_template
        )
    collate = data_collator(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in collate(features[start : start + batch_size]).items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1
        targets = batch["labels"][:, 1:]  # (B, L-1)
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(nll)
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count


# --------------------------------------------------------------------- training


def train_sft(
    data: str | os.PathLike | Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    config: SFTConfig = SFTConfig(),
    progress: bool = True,
    overwrite: bool = False,
) -> SFTResult:
    """Fine-tune a causal LM on demonstrations with transformers' ``Trainer``.

    Args:
        data: a demonstrations JSONL file or an iterable of ``{"prompt", "completion"}``
            mappings (see :func:`load_demonstrations`).
        output_dir: where the model (safetensors), its tokenizer and
            :data:`METADATA_FILENAME` are saved.
        model: the model to start from: ``"smollm2-135m"``, ``"tiny-random"``, a local
            directory or a hub id.
        config: the training options.
        progress: show a progress bar with the latest loss.
        overwrite: replace a fine-tuned model already saved in ``output_dir`` (as ``textenv rm train
            --overwrite`` does a reward model); a directory holding anything else is refused either way.

    Returns:
        An :class:`SFTResult`; ``result.path`` loads with :func:`~textenv.models.load_causal_lm`.

    Raises:
        SFTDataError: the demonstrations are unusable (see :func:`load_demonstrations`).
        SFTOutputError: ``output_dir`` is a file, is not writable, holds other files, or holds a
            fine-tuned model and ``overwrite`` is False (checked before anything is loaded).
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    check_output_dir(Path(output_dir), overwrite)
    demos = load_demonstrations(data)
    tokenizer = load_tokenizer(model)
    device = resolve_device(config.device)
    lm = load_causal_lm(model, device=device, dtype=torch.float32)
    max_length = min(
        config.max_length, getattr(lm.config, "max_position_embeddings", None) or config.max_length
    )
    features, truncated = encode_demonstrations(
        demos, tokenizer, max_length=max_length, chat_template=config.chat_template
    )
    steps = math.ceil(len(features) / config.batch_size) * config.epochs
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        logging_steps=config.logging_steps or max(1, round(steps / 20)),
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        use_cpu=device.type == "cpu",
        bf16=use_bf16(device, config.precision),
        disable_tqdm=True,  # our own bar instead (below)
        dataloader_pin_memory=device.type == "cuda",
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=lm.train(),
        args=args,
        train_dataset=features,
        data_collator=data_collator(tokenizer),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # it prints each log as a line
    if progress:
        trainer.add_callback(_loss_bar())
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start

    # save_pretrained rather than trainer.save_model, which also pickles training_args.bin
    trainer.model.save_pretrained(output_dir)  # safetensors
    tokenizer.save_pretrained(output_dir)
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    result = SFTResult(
        path=Path(output_dir),
        losses=losses,
        num_examples=len(features),
        num_truncated=truncated,
        num_completion_tokens=sum(sum(x != IGNORE_INDEX for x in f["labels"]) for f in features),
        seconds=seconds,
    )
    metadata = {
        "base_model": model,
        "config": asdict(config),
        "num_examples": result.num_examples,
        "num_truncated": truncated,
        "losses": losses,
        "seconds": round(seconds, 2),
    }
    (result.path / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")
    return result


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse an output directory that cannot take the model, before any training.

    Raises:
        SFTOutputError: ``path`` is not a directory, is not writable (or its nearest existing parent is
            not), holds files but no fine-tuned model (:data:`METADATA_FILENAME`), or holds one and
            ``overwrite`` is False.
    """
    if path.exists() and not path.is_dir():
        raise SFTOutputError(f"--output {path}: exists and is not a directory")
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise SFTOutputError(f"--output {path}: {existing} is not writable")
    if path.is_dir() and any(path.iterdir()):
        if not (path / METADATA_FILENAME).is_file():
            raise SFTOutputError(
                f"--output {path}: the directory is not empty and holds no fine-tuned model ({METADATA_FILENAME}); "
                "choose another directory"
            )
        if not overwrite:
            raise SFTOutputError(f"--output {path}: already holds a fine-tuned model; pass --overwrite to replace it")


def _loss_bar():
    """The Trainer's progress bar with the latest loss beside it, instead of a line per log."""
    from transformers import ProgressCallback

    class LossBar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")

    return LossBar()
