"""The vector env's numpy form (``TorchToNumpy``): Gymnasium's vector wrappers and SB3's policies take it as they
take any numpy vector env, while the agent keeps the torch env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers.vector import NormalizeReward, RecordEpisodeStatistics
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from textenv.envs import TextGenVectorEnv, TorchToNumpy


def numpy_envs(tiny_options, n=3, **options):
    return TorchToNumpy(gym.make_vec("textenv/TextGen-v0", num_envs=n, vectorization_mode="vector_entry_point",
                                     **{**tiny_options, **options}))


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_record_episode_statistics_counts_every_episode_s_return_and_length(tiny_options, mode):
    """The torch env crashed in the wrapper (numpy arrays += torch tensors)."""
    envs = RecordEpisodeStatistics(numpy_envs(tiny_options, autoreset_mode=mode))
    envs.reset(seed=0)
    returns, recorded = np.zeros(3), []
    for _ in range(30):
        obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert isinstance(obs["input_ids"], np.ndarray) and obs["input_ids"].dtype == np.int64
        assert rewards.dtype == np.float32 and terminated.dtype == truncated.dtype == np.bool_
        returns += rewards
        for i in np.flatnonzero(terminated | truncated):
            recorded.append((returns[i], info["episode"]["r"][i], info["episode"]["l"][i]))
            returns[i] = 0.0
    assert len(recorded) >= 3
    for own, theirs, length in recorded:
        assert theirs == pytest.approx(own, abs=1e-5) and 1 <= length <= tiny_options["max_new_tokens"]


def test_normalize_reward_runs_over_it_and_scales_the_rewards(tiny_options):
    envs = NormalizeReward(numpy_envs(tiny_options))
    envs.reset(seed=0)
    for _ in range(30):
        _, rewards, *_ = envs.step(envs.action_space.sample())
        assert isinstance(rewards, np.ndarray) and np.isfinite(rewards).all()
    assert envs.return_rms.count > 1  # it has taken rewards in


def test_an_sb3_policy_drives_the_vector_env_through_its_numpy_form(tiny_options, byte_tokenizer):
    """An SB3 model (trained on the single env, as SB3 users do) predicts a batch of actions from the numpy
    observations of the fast vector env."""
    single = make_vec_env(lambda: gym.make("textenv/TextGen-v0", **tiny_options), n_envs=1, seed=0)
    model = PPO("MultiInputPolicy", single, n_steps=16, batch_size=16, seed=0, device="cpu")
    envs = numpy_envs(tiny_options, n=4, autoreset_mode="SameStep")
    obs, _ = envs.reset(seed=0)
    for _ in range(tiny_options["max_new_tokens"]):
        actions, _ = model.predict(obs, deterministic=True)
        assert actions.shape == (4,)
        obs, rewards, terminated, truncated, info = envs.step(actions)
    assert info["_final_obs"].any() or (terminated | truncated).any()


def test_the_torch_form_stays_as_it_is_for_the_agent(tiny_options):
    envs = TextGenVectorEnv(2, autoreset_mode="Disabled", **tiny_options)
    obs, _ = envs.reset(seed=0)
    assert isinstance(obs["input_ids"], torch.Tensor)
    wrapped = TorchToNumpy(envs)
    assert wrapped.unwrapped is envs and wrapped.metadata["autoreset_mode"] == envs.autoreset_mode
    obs, _ = wrapped.reset(seed=0)
    assert isinstance(obs["input_ids"], np.ndarray)
