"""Stable-Baselines3 on textenv: SB3's env checker passes, and its PPO learns a byte-level task.

The task: continue short prompts with 8 bytes of the ByT5 tokenizer (384 actions: 256
bytes, 3 specials, 125 sentinels); the critic, registered here with ``@textenv.reward``,
pays the share of those 8 positions that hold an ASCII lowercase letter. A uniform policy
earns about 26/384 = 0.07, the best one 1.0. With the seeds below PPO goes from 0.07 to
about 0.8 in 16k steps (~4 s on one core), so the 0.3 margin fails only if learning does.
"""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import transformers
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

CRITIC = "lowercase_share"  # the conftest fixture's name
MAX_NEW_TOKENS = 8
PROMPTS = ["Hi", "The cat", "Once upon a time"]


@pytest.fixture
def critic(lowercase_critic):
    """The share of lowercase letters (conftest), under the name this module expects."""
    assert lowercase_critic == CRITIC
    return lowercase_critic


def make_env(reward: str) -> gym.Env:
    return gym.make(
        "textenv/TextGen-v0",
        tokenizer=transformers.ByT5Tokenizer(),
        model=None,
        prompts=PROMPTS,
        max_new_tokens=MAX_NEW_TOKENS,
        reward=reward,
    )


def test_sb3_check_env_passes(critic):
    env = make_env(critic)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # raises on a failed check
        check_env(env)
    checker_warnings = [str(w.message) for w in caught if "env_checker" in w.filename]
    assert checker_warnings == []


def test_critic_reward_reaches_sb3_through_the_env(critic):
    env = make_env(critic)
    env.reset(seed=0)
    lowercase_a, space = 3 + ord("a"), 3 + ord(" ")  # ByT5: id = byte + 3
    for action in [lowercase_a] * 3 + [space] * (MAX_NEW_TOKENS - 3):
        _, reward, terminated, truncated, info = env.step(action)
    assert truncated and not terminated
    assert info["completion"] == "aaa     "
    assert reward == pytest.approx(3 / MAX_NEW_TOKENS)
    assert info["reward_terms"] == {CRITIC: pytest.approx(3 / MAX_NEW_TOKENS)}


def mean_reward(model: PPO, env, seed: int, episodes: int = 100) -> float:
    """Mean episode reward of the stochastic policy over a fixed, seeded set of episodes.

    deterministic=False measures the policy PPO optimizes (its expected reward). Before
    training the argmax of a near-uniform policy is one arbitrary token repeated, so a
    deterministic score would be 0 or 1 by the luck of the initialization.
    """
    model.set_random_seed(seed)  # the sampling of actions (torch) and of prompts
    env.seed(seed)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=False)
    return float(mean)


def test_ppo_learns_the_critic(critic):
    env = make_vec_env(lambda: make_env(critic), n_envs=8, seed=0)
    eval_env = make_vec_env(lambda: make_env(critic), n_envs=1, seed=1)
    # gamma=1: the reward comes once, at the last token, and every token counts alike.
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=64,
        batch_size=128,
        n_epochs=4,
        learning_rate=3e-3,
        gamma=1.0,
        gae_lambda=0.95,
        ent_coef=0.0,
        seed=0,
        device="cpu",
    )

    before = mean_reward(model, eval_env, seed=123)
    model.learn(total_timesteps=16384)
    after = mean_reward(model, eval_env, seed=123)

    print(f"mean reward of {CRITIC}: before {before:.3f}, after {after:.3f}")
    assert before == pytest.approx(26 / 384, abs=0.04)  # about uniform over the 384 ids
    assert after >= before + 0.3, f"PPO did not learn: {before:.3f} -> {after:.3f}"
    assert np.isfinite(after) and after <= 1.0
