"""``repetition``: penalize repeated n-grams, the standard guard against degenerate text."""

from __future__ import annotations

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardSource


def repetition(
    completions: list[str], completion_ids: list[list[int]], *, n: int = 3, unit: str = "tokens"
) -> list[float]:
    """Minus the share of n-grams that repeat an earlier one, in [-1, 0]; 0 for fresh text.

    Args:
        completions: the texts (for ``unit="words"``).
        completion_ids: the tokens (for ``unit="tokens"``).
        n: the n-gram size.
        unit: ``"tokens"`` or ``"words"``.
    """
    check_options(n=n, unit=unit)
    seqs = completion_ids if unit == "tokens" else [t.lower().split() for t in completions]
    return [-_repeated_share(list(seq), n) for seq in seqs]


def check_options(*, n: int = 3, unit: str = "tokens") -> None:
    """Refuse an ``n`` that is not a whole number >= 1 or a ``unit`` other than tokens and words.

    Raises:
        ValueError: the option and its value.
    """
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"n= must be a whole number >= 1, got {n!r}")
    if unit not in ("tokens", "words"):
        raise ValueError(f"unit= must be 'tokens' or 'words', got {unit!r}")


def _repeated_share(seq: list, n: int) -> float:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@hookimpl
def textenv_reward_sources():
    return [RewardSource("repetition", repetition, check_options=check_options)]
