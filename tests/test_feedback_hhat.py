"""Ĥ learns a consistent simulated teacher from delayed, credited keypresses; saves and reloads."""

from __future__ import annotations

import numpy as np
import pytest

from textenv.plugins.human.credit import UniformDelay, credit_keypresses, hidden_times
from textenv.plugins.human.hhat import HHatConfig, HumanRewardModel, token_windows

VOCAB = 120


def _teacher_values() -> np.ndarray:
    """A consistent teacher: tokens 0-9 are good (+1), 10-19 bad (-1), the rest say nothing."""
    values = np.zeros(VOCAB)
    values[:10], values[10:20] = 1.0, -1.0
    return values


def _watched_episode(rng, values, *, length=24, pace=4.0):
    """One streamed episode and what a person with 0.3-1.5 s reactions (10 % missed, 5 % wrong) pressed."""
    ids = rng.integers(VOCAB, size=length)
    shown = np.arange(length) / pace
    times, signals = [], []
    for k in np.flatnonzero(values[ids]):
        if rng.random() < 0.9:
            times.append(shown[k] + rng.uniform(0.3, 1.5))
            signals.append(values[ids[k]] * (-1 if rng.random() < 0.05 else 1))
    rewards, _ = credit_keypresses(times, signals, shown, hidden_times(shown, length / pace + 1.0), UniformDelay())
    return ids, rewards, len(times)


def test_hhat_predictions_correlate_with_the_teachers_judgement_on_held_out_tokens():
    rng = np.random.default_rng(0)
    values = _teacher_values()
    hhat = HumanRewardModel(HHatConfig(buckets=VOCAB))
    for _ in range(20):  # 20 batches of 16 episodes, trained online as feedback arrives
        batch = [_watched_episode(rng, values) for _ in range(16)]
        hhat.observe([b[0] for b in batch], [b[1] for b in batch], presses=sum(b[2] for b in batch))
        hhat.update()
    held_out = [rng.integers(VOCAB, size=24) for _ in range(100)]
    predicted = np.concatenate(hhat.predict(held_out))
    judged = np.concatenate([values[ids] for ids in held_out])
    assert np.corrcoef(predicted, judged)[0, 1] > 0.3
    # good tokens predicted above bad ones on average
    assert predicted[judged > 0].mean() > predicted[judged == 0].mean() > predicted[judged < 0].mean()


def test_an_untrained_hhat_has_no_opinion():
    hhat = HumanRewardModel(HHatConfig(buckets=64))
    [pred] = hhat.predict([[1, 2, 3]])
    np.testing.assert_array_equal(pred, 0.0)
    assert np.isnan(hhat.update())  # empty replay buffer: nothing to learn


def test_windows_hold_the_token_then_the_ones_before_it():
    cfg = HHatConfig(buckets=100, context=2)
    np.testing.assert_array_equal(token_windows([7, 8, 9], cfg), [[8, 0, 0], [9, 8, 0], [10, 9, 8]])


def test_save_and_load_give_the_same_predictions(tmp_path):
    hhat = HumanRewardModel(HHatConfig(buckets=64, context=3))
    hhat.observe([[1, 2, 3, 4]], [[0.5, 0.0, -0.5, 0.1]], presses=2)
    hhat.update(30)
    path = hhat.save(tmp_path / "run" / "hhat.safetensors")
    again = HumanRewardModel.load(path)
    assert again.config == hhat.config and again.presses_seen == 2 and again.updates == 30
    np.testing.assert_allclose(again.predict([[4, 3, 2, 1]])[0], hhat.predict([[4, 3, 2, 1]])[0])


def test_loading_something_else_is_a_clear_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a saved Ĥ"):
        HumanRewardModel.load(path)


def test_mismatched_rewards_are_refused():
    with pytest.raises(ValueError, match="3 tokens but 2 rewards"):
        HumanRewardModel(HHatConfig(buckets=8)).observe([[1, 2, 3]], [[0.0, 1.0]])
