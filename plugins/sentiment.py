"""``sentiment``: VADER's compound sentiment score of each completion, in [-1, 1]."""

from __future__ import annotations

import functools
import itertools

import numpy as np

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardSource


@functools.cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def _sign(target: str) -> float:
    """+1 for target=positive, -1 for negative."""
    if target not in ("positive", "negative"):
        raise ValueError(f"target= must be 'positive' or 'negative', got {target!r}")
    return 1.0 if target == "positive" else -1.0


def sentiment(completions: list[str], *, target: str = "positive") -> list[float]:
    """VADER compound sentiment of the completion, in [-1, 1] (target=negative flips it)."""
    sign = _sign(target)
    analyzer = _analyzer()
    return [sign * analyzer.polarity_scores(text)["compound"] for text in completions]


def sentiment_dense(tokens: list[list[str]], *, target: str = "positive") -> list[np.ndarray]:
    """``sentiment`` paid out per token: token t gets the change in the compound score of the text so far.

    An episode's sum is the score of its tokens joined, and each token is credited with
    the sentiment it added (a potential-based shaping of ``sentiment``).
    """
    sign = _sign(target)
    analyzer = _analyzer()
    rewards = []
    for pieces in tokens:
        prefixes = itertools.accumulate(pieces)  # the text after each token
        scores = [0.0] + [analyzer.polarity_scores(text)["compound"] for text in prefixes]  # T + 1
        rewards.append(sign * np.diff(scores))  # (T,)
    return rewards


def check_options(*, target: str = "positive") -> None:
    """Refuse a ``target`` other than positive and negative (``ValueError``)."""
    _sign(target)


@hookimpl
def textenv_reward_sources():
    return [RewardSource("sentiment", sentiment, check_options=check_options),
            RewardSource("sentiment_dense", sentiment_dense, check_options=check_options)]
