"""``sentiment``: VADER's compound sentiment score of each completion, in [-1, 1]."""

from __future__ import annotations

import functools

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardSource


@functools.cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(completions: list[str], *, target: str = "positive") -> list[float]:
    """VADER compound sentiment of the completion, in [-1, 1] (target=negative flips it)."""
    if target not in ("positive", "negative"):
        raise ValueError(f"target must be 'positive' or 'negative', got {target!r}")
    sign = 1.0 if target == "positive" else -1.0
    analyzer = _analyzer()
    return [sign * analyzer.polarity_scores(text)["compound"] for text in completions]


@hookimpl
def textenv_reward_sources():
    return [RewardSource("sentiment", sentiment)]
