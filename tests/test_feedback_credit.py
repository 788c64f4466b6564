"""TAMER credit assignment on hand-computed timestamps."""

from __future__ import annotations

import numpy as np
import pytest

from textenv.plugins.human.credit import UniformDelay, credit_keypresses, credit_weights, hidden_times


def test_weights_are_the_delay_mass_over_each_token_interval():
    # tokens on screen over [0,1), [1,2), [2,3), [3,4); delay uniform on [0.2, 4.0] (width 3.8)
    shown = np.array([0.0, 1.0, 2.0, 3.0])
    hidden = hidden_times(shown, end=4.0)
    np.testing.assert_array_equal(hidden, [1.0, 2.0, 3.0, 4.0])
    # a press at t = 3 looks back over [t - 4, t - 0.2] = [-1, 2.8]
    w = credit_weights(3.0, shown, hidden, UniformDelay())
    np.testing.assert_allclose(w, [1 / 3.8, 1 / 3.8, 0.8 / 3.8, 0.0])
    # the window part before the first token (-1..0) is credited to nothing
    assert w.sum() == pytest.approx(2.8 / 3.8)


def test_a_press_within_min_delay_of_a_token_does_not_credit_it():
    shown = np.array([0.0, 0.5])
    w = credit_weights(0.6, shown, hidden_times(shown, 1.0), UniformDelay(min_delay=0.2, max_delay=1.0))
    # window [-0.4, 0.4]: all of it on token 0 (shown 0.5 s ago at most), none on token 1 (0.1 s ago)
    np.testing.assert_allclose(w, [0.4 / 0.8, 0.0])


def test_a_late_press_credits_only_what_it_can_be_about():
    shown = np.array([0.0, 1.0, 2.0])
    w = credit_weights(10.0, shown, hidden_times(shown, 3.0), UniformDelay(min_delay=0.2, max_delay=4.0))
    np.testing.assert_array_equal(w, [0.0, 0.0, 0.0])


def test_rewards_sum_signals_times_weights_and_masses_sum_weights():
    delay = UniformDelay(min_delay=0.0, max_delay=2.0)
    shown = np.array([0.0, 1.0, 2.0])
    hidden = hidden_times(shown, 3.0)
    # press +1 at t=2 covers [0, 2]: tokens 0 and 1 half each; press -2 at t=3 covers [1, 3]: tokens 1, 2
    rewards, masses = credit_keypresses([2.0, 3.0], [1.0, -2.0], shown, hidden, delay)
    np.testing.assert_allclose(rewards, [0.5, 0.5 - 1.0, -1.0])
    np.testing.assert_allclose(masses, [0.5, 1.0, 0.5])


def test_a_pause_lengthens_the_paused_token_interval():
    # the last token stays on screen 3 s (a pause) before the display ends
    shown = np.array([0.0, 1.0])
    hidden = hidden_times(shown, end=4.0)
    w = credit_weights(4.0, shown, hidden, UniformDelay(min_delay=0.0, max_delay=4.0))
    np.testing.assert_allclose(w, [0.25, 0.75])


def test_no_presses_give_zeros():
    rewards, masses = credit_keypresses([], [], np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    assert rewards.shape == masses.shape == (2,) and not rewards.any() and not masses.any()


def test_the_delay_distribution_checks_its_bounds_and_scales():
    with pytest.raises(ValueError, match="min_delay < max_delay"):
        UniformDelay(min_delay=2.0, max_delay=1.0)
    fast = UniformDelay().scaled(10)
    assert (fast.min_delay, fast.max_delay) == pytest.approx((0.02, 0.4))
