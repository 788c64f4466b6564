"""``length``: penalize the distance of a completion's length from a target."""

from __future__ import annotations

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
        target: the wished length.
        unit: ``"tokens"`` or ``"words"``.
    """
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    if unit == "tokens":
        sizes = [len(ids) - int(eos) for ids, eos in zip(completion_ids, terminated)]
    elif unit == "words":
        sizes = [len(text.split()) for text in completions]
    else:
        raise ValueError(f"unit must be 'tokens' or 'words', got {unit!r}")
    return [-abs(size - target) / target for size in sizes]


@hookimpl
def textenv_reward_sources():
    return [RewardSource("length", length)]
