"""The single env: spaces, episode ends, rewards, rendering, checkers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textenv
from textenv.envs.task import DEFAULT_REWARD
from textenv.rewards import parse_reward_spec


@pytest.mark.parametrize("env_id", textenv.ENV_IDS)
def test_registered_env_passes_both_checkers(env_id, tiny_options):
    env = gym.make(env_id, **tiny_options)
    gym_check_env(env.unwrapped, skip_render_check=False)
    sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("env_id", textenv.ENV_IDS)
def test_registered_env_makes_a_vector_env(env_id, tiny_options):
    envs = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", **tiny_options)
    obs, info = envs.reset(seed=0)
    assert obs["input_ids"].shape == (3, envs.unwrapped.task.seq_len)
    assert info["_prompt"].all()


def test_spaces_and_observation_layout(byte_id, tiny_options, byte_tokenizer):
    env = gym.make("textenv/TextGen-v0", **tiny_options)
    obs, info = env.reset(options={"prompt": "a"})
    width = max(len(p) for p in ["hello", "the movie was", "a"])  # bytes = tokens
    assert env.action_space == gym.spaces.Discrete(len(byte_tokenizer))
    assert obs["input_ids"].shape == (width + 6,)
    # the prompt is left-padded to P positions, the completion region is empty
    assert obs["attention_mask"].tolist() == [0] * (width - 1) + [1] + [0] * 6
    assert obs["input_ids"][width - 1] == byte_id("a")
    assert info == {"prompt": "a"}
    obs, *_ = env.step(byte_id("b"))
    assert obs["attention_mask"][width] == 1 and obs["input_ids"][width] == byte_id("b")


def test_eos_terminates_and_scores_once(byte_id, tiny_options, byte_tokenizer):
    env = gym.make("textenv/TextGen-v0", **tiny_options)
    env.reset(seed=1, options={"prompt": "hello"})
    rewards = []
    for char in "good":
        _, r, terminated, truncated, info = env.step(byte_id(char))
        assert not (terminated or truncated) and info == {}
        rewards.append(r)
    _, r, terminated, truncated, info = env.step(byte_tokenizer.eos_token_id)
    assert terminated and not truncated
    assert rewards == [0.0] * 4
    assert info["completion"] == "good" and info["prompt"] == "hello"
    # VADER scores "good" 0.4404; length 4 vs target 3 gives -1/3, weighted by 0.5
    assert info["raw_reward_terms"]["sentiment"] == pytest.approx(0.4404)
    assert info["reward_terms"]["length"] == pytest.approx(-0.5 / 3)
    assert r == pytest.approx(sum(info["reward_terms"].values()))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(byte_id("x"))


def test_length_limit_truncates(byte_id, tiny_options, byte_tokenizer):
    env = gym.make("textenv/TextGen-v0", **tiny_options)
    env.reset(seed=0)
    flags = [env.step(byte_id("z"))[2:4] for _ in range(6)]
    assert flags == [(False, False)] * 5 + [(False, True)]


def test_action_outside_vocabulary_is_an_error(tiny_options):
    env = gym.make("textenv/TextGen-v0", **tiny_options).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(10_000)


def test_reset_is_deterministic_under_a_seed(tiny_options):
    env = gym.make("textenv/TextGen-v0", **tiny_options)
    prompts = [env.reset(seed=s)[1]["prompt"] for s in range(10)]
    again = [env.reset(seed=s)[1]["prompt"] for s in range(10)]
    assert prompts == again and len(set(prompts)) > 1


def test_render_shows_prompt_and_completion(byte_id, tiny_options, byte_tokenizer, capsys):
    env = gym.make("textenv/TextGen-v0", render_mode="ansi", **tiny_options)
    env.reset(options={"prompt": "the movie was"})
    env.step(byte_id("!"))
    assert env.render() == "the movie was\u27e6!\u27e7"
    human = gym.make("textenv/TextGen-v0", render_mode="human", **tiny_options)
    human.reset(options={"prompt": "a"})
    human.step(byte_tokenizer.eos_token_id)
    out = capsys.readouterr().out
    assert "a\u27e6\u27e7" in out and "sentiment" in out


def test_chat_template_wraps_prompts(byte_tokenizer):
    byte_tokenizer = type(byte_tokenizer)()
    byte_tokenizer.chat_template = "<u>{{ messages[0]['content'] }}</u>{% if add_generation_prompt %}<a>{% endif %}"
    env = gym.make("textenv/TextGen-v0", tokenizer=byte_tokenizer, model=None, prompts=["hi"],
                   reward="length", chat_template=True, render_mode="ansi")
    obs, _ = env.reset(seed=0)
    ids = obs["input_ids"][obs["attention_mask"] == 1]
    assert byte_tokenizer.decode(ids) == "<u>hi</u><a>"


def test_long_prompts_keep_their_end_with_a_warning(byte_tokenizer):
    with pytest.warns(UserWarning, match="keep only their last 4 tokens"):
        env = gym.make("textenv/TextGen-v0", tokenizer=byte_tokenizer, model=None,
                       prompts=["abcdefgh"], max_prompt_tokens=4, reward="length")
    obs, _ = env.reset(seed=0)
    assert byte_tokenizer.decode(obs["input_ids"][:4]) == "efgh"


@pytest.mark.parametrize("width", [0, -3])
def test_max_prompt_tokens_below_one_is_refused(tiny_options, width):
    with pytest.raises(ValueError, match=f"max_prompt_tokens must be at least 1, got {width}"):
        gym.make("textenv/TextGen-v0", **tiny_options, max_prompt_tokens=width)


@pytest.mark.slow
def test_default_model_env_passes_both_checkers():
    env = gym.make("textenv/TextGen-v0", max_new_tokens=8)  # smollm2-135m, movie reviews, sentiment
    assert env.action_space.n == 49152
    gym_check_env(env.unwrapped)
    sb3_check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert info["prompt"] in env.unwrapped.task.prompts
    assert np.all(obs["input_ids"] < 49152)


def test_per_token_rewards_reach_info_and_the_reward(fresh_default_pm, tiny_options, byte_id):
    @textenv.reward
    def vowel_tokens(completions, completion_ids):
        """+1 on each vowel token: a per-token (shaping) source."""
        vowels = {byte_id(v) for v in "aeiou"}
        return [[float(t in vowels) for t in ids] for ids in completion_ids]

    env = gym.make("textenv/TextGen-v0", **{**tiny_options, "reward": "0.5*vowel_tokens"})
    env.reset(seed=0)
    for char in "bab":
        env.step(byte_id(char))
    _, reward, terminated, _, info = env.step(1)
    assert terminated
    np.testing.assert_allclose(info["token_rewards"], [0.0, 0.5, 0.0, 0.0])
    assert reward == pytest.approx(0.5) and info["reward_terms"]["vowel_tokens"] == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:.*render_mode=.rgb_array. that is not in the possible")
def test_an_unsupported_render_mode_is_refused(tiny_options):
    # TypeError, as for an unexpected argument, so SB3's make_vec_env retries without rgb_array
    with pytest.raises(TypeError, match="render_mode must be one of"):
        gym.make("textenv/TextGen-v0", render_mode="rgb_array", **tiny_options)


def test_render_follows_the_render_mode(capsys):
    options = dict(model="tiny-random", prompts=["the movie was"], max_new_tokens=4, reward="length(target=4)")
    silent, human = textenv.envs.TextGenEnv(**options), textenv.envs.TextGenEnv(render_mode="human", **options)
    for env in (silent, human):
        env.reset(seed=0)
    assert silent.render() is None and capsys.readouterr().out == ""
    assert human.render() is None and capsys.readouterr().out == "the movie was\u27e6\u27e7\n"


def test_the_env_s_default_reward_is_the_training_command_s(byte_tokenizer):
    """A user who makes the env and trains on it by hand gets the reward ``textenv train`` optimizes."""
    from textenv.agents.train import TRAIN_REWARD

    env = gym.make("textenv/TextGen-v0", tokenizer=byte_tokenizer, model=None, prompts=["hi"])
    assert parse_reward_spec(TRAIN_REWARD) == parse_reward_spec(DEFAULT_REWARD)
    assert env.unwrapped.task.rewards.names == [t.name for t in parse_reward_spec(TRAIN_REWARD)]
