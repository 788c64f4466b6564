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


def test_the_credit_committed_with_each_press_is_the_whole_batchs_credit_so_far(tmp_path):
    """Each press commits only what it changes; together the commits equal crediting every press at once."""
    import os
    import pty

    from textenv.plugins.human.store import FeedbackStore
    from textenv.plugins.human.stream import StreamConfig, TokenFeedback, _Batch
    from textenv.plugins.human.terminal import Key, KeyReader

    rng = np.random.default_rng(0)
    master, slave = pty.openpty()
    delay = UniformDelay(min_delay=0.2, max_delay=4.0)
    with FeedbackStore(tmp_path / "f.db") as store, open(os.devnull, "w") as out:
        session = store.start_session("tokens")
        feedback = TokenFeedback(store, session, config=StreamConfig(delay=delay), reader=KeyReader(slave), out=out)
        feedback._batch = batch = _Batch()  # as stream() sets it while it displays
        shown, ends, t = [], [], 1000.0
        for e in range(12):
            times = batch.add(store.add_episode(session, "p", f"c{e}", list(range(16)), ["x"] * 16), 16)
            for _ in range(16):
                times.append(t)
                t += 0.25
                if rng.random() < 0.4:
                    feedback.on_key(Key("g" if rng.random() < 0.6 else "b", t - 0.1 * rng.random()))
            t += 0.5
            if e < 11:  # the last is still on screen: killed mid-completion
                batch.ends[e] = t
                store.set_display_times(batch.episode_ids[e], times, t)
            shown.append(list(times))
            ends.append(batch.ends[e] if e < 11 else max(p.at for p in store.keypresses()))
            t += 0.3
        presses = store.keypresses()
        assert len(presses) > 40
        every, _ = credit_keypresses([p.at for p in presses], [p.signal for p in presses], np.concatenate(shown),
                                     np.concatenate([hidden_times(s, end) for s, end in zip(shown, ends)]), delay)
        stored = np.concatenate([rewards for _, rewards, _ in store.token_feedback()])
    os.close(master)
    os.close(slave)
    np.testing.assert_allclose(stored, every, atol=1e-12)
