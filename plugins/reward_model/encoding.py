"""Turning (prompt, completion) pairs into backbone inputs: tokenize, truncate, pad."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch


class TruncationWarning(UserWarning):
    """Some inputs were longer than the reward model's limit and lost their beginning."""


def input_limit(model: Any, tokenizer: Any, wanted: int) -> int:
    """The longest input the reward model takes: ``wanted`` capped by the backbone's limits."""
    limits = [wanted, getattr(model.config, "max_position_embeddings", None)]
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1e9:
        limits.append(tokenizer.model_max_length)
    return min(int(x) for x in limits if x)


def encode(
    tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int
) -> list[dict[str, list[int]]]:
    """Tokenize each (prompt, completion) as the tokenizer's text pair.

    An encoder gets ``[CLS] prompt [SEP] completion [SEP]``; a causal LM's tokenizer
    usually joins the two. Inputs over ``max_length`` tokens keep their end (truncated
    from the left, the longer part first), and one :class:`TruncationWarning` says how many.

    Returns:
        One dict of token lists (``input_ids``, ``attention_mask``, maybe ``token_type_ids``)
        per pair.
    """
    if not len(prompts):
        return []
    prompts, completions = list(prompts), list(completions)
    batch = tokenizer(prompts, completions)
    lengths = [len(ids) for ids in batch["input_ids"]]
    too_long = sum(n > max_length for n in lengths)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(lengths)} reward-model inputs are longer than {max_length} tokens "
            f"(longest {max(lengths)}); their beginnings were cut",
            TruncationWarning,
            stacklevel=3,
        )
        batch = _truncated(tokenizer, prompts, completions, max_length)
    return [{key: batch[key][i] for key in batch} for i in range(len(prompts))]


def _truncated(tokenizer: Any, prompts: list[str], completions: list[str], max_length: int) -> Any:
    """Tokenize with left truncation, the longer part first (the completion's end is kept)."""
    from textenv.plugins.reward_model.model import quiet_transformers

    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        with quiet_transformers():  # python tokenizers log a note on pair truncation per call
            return tokenizer(
                prompts, completions, truncation="longest_first", max_length=max_length
            )
    finally:
        tokenizer.truncation_side = side


def pad(tokenizer: Any, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Pad encoded inputs on the right into one batch: each value (B, T)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        return dict(tokenizer.pad(list(features), return_tensors="pt"))
    finally:
        tokenizer.padding_side = side
