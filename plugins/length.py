"""``length``: penalize the distance of a completion's length from a target."""

from __future__ import annotations

import math

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardSource


def length(
    completions: list[str],
    completion_ids: list[list[int]],
    terminated: list[bool],
    *,
    target: int = 32,
    unit: str = "tokens",
) -> list[float]:
    """-|length - target| / target, in tokens (EOS not counted) or words; 0 at the target.

    Args:
        completions: the texts (for ``unit="words"``).
        completion_ids: the tokens (for ``unit="tokens"``).
        terminated: whether each completion ended on EOS, which is not counted.
        target: the wished length, > 0.
        unit: ``"tokens"`` or ``"words"``.
    """
    check_options(target=target, unit=unit)
    if unit == "tokens":
        sizes = [len(ids) - int(eos) for ids, eos in zip(completion_ids, terminated)]
    else:
        sizes = [len(text.split()) for text in completions]
    return [-abs(size - target) / target for size in sizes]


def check_options(*, target: int = 32, unit: str = "tokens") -> None:
    """Refuse a ``target`` that is not a finite number > 0 or a ``unit`` other than tokens and words.

    Raises:
        ValueError: the option and its value.
    """
    number = isinstance(target, (int, float)) and not isinstance(target, bool)
    if not (number and math.isfinite(target) and target > 0):
        raise ValueError(f"target= must be a number > 0, got {target!r}")
    if unit not in ("tokens", "words"):
        raise ValueError(f"unit= must be 'tokens' or 'words', got {unit!r}")


@hookimpl
def textenv_reward_sources():
    return [RewardSource("length", length, check_options=check_options)]
