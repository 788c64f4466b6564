"""TAMER credit assignment: which tokens a keypress was about.

A person reacts to what they saw a moment ago. A keypress at time ``t`` is credited
to the tokens shown in the window ``[t - max_delay, t - min_delay]`` through a delay
distribution (Knox & Stone's TAMER; Deep TAMER uses uniform over 0.2–4 s): token k,
on screen over ``[shown_k, hidden_k)``, gets the probability that the reaction delay
``D`` put the press's cause inside its interval::

    weight_k = P(t - D in [shown_k, hidden_k)) = F(t - shown_k) - F(t - hidden_k)

where F is the delay's CDF. The weights of one press sum to at most 1 (less when part
of the window falls before the first token or on a blank screen). A token's reward is
the sum over presses of ``weight * value * strength``; its *mass*, the summed weight,
says how much feedback it received at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class UniformDelay:
    """A uniform reaction-delay distribution (Deep TAMER's default: 0.2–4 s)."""

    min_delay: float = 0.2
    """Shortest delay in seconds between seeing a token and pressing a key about it."""
    max_delay: float = 4.0
    """Longest such delay in seconds."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay < self.max_delay:
            raise ValueError(f"need 0 <= min_delay < max_delay, got {self.min_delay} and {self.max_delay}")

    def cdf(self, delay: np.ndarray) -> np.ndarray:
        """P(D <= delay), elementwise."""
        return np.clip((np.asarray(delay, dtype=np.float64) - self.min_delay)
                       / (self.max_delay - self.min_delay), 0.0, 1.0)

    def scaled(self, factor: float) -> UniformDelay:
        """The same shape on a time axis ``factor`` times faster (for fast replays of a session)."""
        return UniformDelay(min_delay=self.min_delay / factor, max_delay=self.max_delay / factor)


def credit_weights(
    press_time: float, shown_at: np.ndarray, hidden_at: np.ndarray, delay: UniformDelay = UniformDelay()
) -> np.ndarray:
    """The credit weight of each displayed token for one keypress.

    Args:
        press_time: when the key was pressed.
        shown_at: (K,) when each token appeared.
        hidden_at: (K,) when each token stopped being the newest (the next one's
            ``shown_at``, or the end of the display for the last).
        delay: the reaction-delay distribution (anything with a vectorized ``cdf``).

    Returns:
        (K,) weights in [0, 1], summing to at most 1.
    """
    shown_at = np.asarray(shown_at, dtype=np.float64)  # (K,)
    hidden_at = np.asarray(hidden_at, dtype=np.float64)  # (K,)
    return delay.cdf(press_time - shown_at) - delay.cdf(press_time - hidden_at)  # (K,)


def credit_keypresses(
    press_times: Sequence[float],
    signals: Sequence[float],
    shown_at: np.ndarray,
    hidden_at: np.ndarray,
    delay: UniformDelay = UniformDelay(),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token rewards and credit masses from a series of keypresses.

    Args:
        press_times: (E,) when each key was pressed.
        signals: (E,) each press's ``value * strength`` (+ good, - bad).
        shown_at: (K,) when each token appeared (one timeline, across episodes).
        hidden_at: (K,) when each token stopped being the newest.
        delay: the reaction-delay distribution.

    Returns:
        rewards (K,): the sum over presses of weight * signal; masses (K,): the summed weights.
    """
    press = np.asarray(press_times, dtype=np.float64)[:, None]  # (E, 1)
    shown = np.asarray(shown_at, dtype=np.float64)[None, :]  # (1, K)
    hidden = np.asarray(hidden_at, dtype=np.float64)[None, :]  # (1, K)
    weights = delay.cdf(press - shown) - delay.cdf(press - hidden)  # (E, K)
    signals = np.asarray(signals, dtype=np.float64)  # (E,)
    return signals @ weights, weights.sum(0)


def hidden_times(shown_at: Sequence[float], end: float) -> np.ndarray:
    """Each token's end of display: the next token's appearance, ``end`` for the last.

    Args:
        shown_at: (K,) appearance times in display order.
        end: when the display of the last token ended (a pause before it counts as display).
    """
    shown = np.asarray(shown_at, dtype=np.float64)
    return np.append(shown[1:], end) if len(shown) else shown
