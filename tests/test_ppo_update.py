"""The PPO update's guards and options on a tiny real model: group advantages, the exact KL, target KL,
the ratio guard, reward clipping, the learning-rate schedule, weights-only checkpoints, SB3/TRL habits."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from textenv.agents import PPO
from textenv.agents.ppo_math import full_kl
from textenv.generation import position_ids

PROMPTS = ["hello", "the movie was", "a", "once upon"]


def make_env(reward="length(target=4)", max_new_tokens=8):
    return gym.make("textenv/TextGen-v0", model="tiny-random", prompts=PROMPTS,
                    max_new_tokens=max_new_tokens, reward=reward)


def small_agent(env, **options):
    defaults = dict(batch_size=8, mini_batch_size=4, ppo_epochs=2, precision="fp32", progress=False, seed=0)
    return PPO(env, **{**defaults, **options})


def episodes_with(agent, lengths, scores):
    """A real rollout whose episodes are cut to ``lengths`` tokens and scored ``scores``."""
    episodes = agent.rollout()
    t = episodes.completion_ids.shape[1]
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).to(episodes.completion_mask.dtype)  # (B, T)
    return dataclasses.replace(
        episodes, completion_mask=mask, rewards=np.asarray(scores, dtype=float),
        token_rewards=torch.zeros(len(lengths), t),
    )


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_group_advantages_keep_their_sign_and_their_zero_whatever_the_lengths(advantage):
    """Whitening over tokens gave an all-equal group -0.68 per token and scaled the others by their lengths."""
    agent = small_agent(make_env(max_new_tokens=16), advantage=advantage, group_size=4,
                        init_kl_coef=0.0, adaptive_kl=False)
    episodes = episodes_with(agent, lengths=[16, 16, 2, 2, 5, 9, 3, 12], scores=[1, 1, 0, 0, 0.5, 0.5, 0.5, 0.5])
    batch, _ = agent.make_batch(episodes)
    adv, mask = batch.advantages, batch.mask.bool()
    assert torch.all(adv[4:] == 0)  # the group of equal rewards: no advantage at any token
    assert torch.all(adv[:2][mask[:2]] > 0) and torch.all(adv[2:4][mask[2:4]] < 0)
    per_row = [adv[i][mask[i]].unique() for i in range(4)]
    assert all(len(u) == 1 for u in per_row)  # one advantage per sequence, on each of its tokens
    assert per_row[0].item() == pytest.approx(-per_row[2].item())  # lengths 16 and 2: the same magnitude
    assert torch.all(adv[~mask] == 0)


def test_the_full_kl_between_identical_policy_and_reference_is_exactly_zero_under_bf16():
    """The reference's distribution used to be stored in bf16: the per-position KL came out at +-1e-3."""
    agent = small_agent(make_env(), precision="bf16", kl_in_loss=True, kl_estimator="full")
    batch, _ = agent.make_batch(agent.rollout())
    assert batch.ref_logp_full.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = agent.policy(batch.input_ids, batch.attention_mask, batch.tokens.shape[1], values=False)
    per_position = full_kl(agent._scaled(logits), batch.ref_logp_full)  # (B, T)
    assert per_position[batch.mask.bool()].abs().max().item() == 0.0


def test_target_kl_stops_the_iteration_before_the_step_that_would_overshoot():
    moving = dict(learning_rate=5e-3, ppo_epochs=4)  # 2 mini-batches per epoch: 8 steps without a stop
    free = small_agent(make_env(), **moving).train_iteration()
    assert free["losses/optimizer_steps"] == 8 and free["losses/early_stopped"] == 0
    stopped = small_agent(make_env(), target_kl=1e-9, **moving).train_iteration()
    # The first mini-batch has ratio 1 (KL 0) and steps; the second has moved: the iteration ends there,
    # in the middle of the first epoch.
    assert stopped["losses/optimizer_steps"] == 1 and stopped["losses/early_stopped"] == 1
    assert stopped["losses/epochs"] == 1


def test_the_ratio_guard_skips_mini_batches_whose_mean_ratio_is_too_high():
    agent = small_agent(make_env(), learning_rate=1e-3, ratio_threshold=2.0)
    batch, _ = agent.make_batch(agent.rollout())
    before = [p.detach().clone() for p in agent.policy.parameters()]
    far = dataclasses.replace(batch, logprobs=batch.logprobs - batch.mask)  # every ratio e = 2.72 > 2
    stats = agent.update(far)
    assert stats["losses/skipped_minibatches"] == 4 and stats["losses/optimizer_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))
    near = dataclasses.replace(batch, logprobs=batch.logprobs - 0.5 * batch.mask)  # ratio 1.65: stepped
    assert agent.update(near)["losses/optimizer_steps"] == 4


def test_the_ratio_guard_weighs_micro_batches_by_their_tokens():
    """A mini-batch of a 1-token episode at ratio e^2 and a 15-token one at ratio 1: its mean ratio is
    (7.39 + 15) / 16 = 1.40, under a guard at 2, where the mean of micro-batch means (4.19) is over it."""
    agent = small_agent(make_env(max_new_tokens=16), batch_size=2, mini_batch_size=2, gradient_accumulation_steps=2,
                        ppo_epochs=1, ratio_threshold=2.0, learning_rate=1e-3)
    batch, _ = agent.make_batch(episodes_with(agent, lengths=[1, 15], scores=[1.0, 0.0]))
    shifted = batch.logprobs.clone()
    shifted[0, 0] -= 2.0  # the short episode's one token
    stats = agent.update(dataclasses.replace(batch, logprobs=shifted))
    assert stats["losses/optimizer_steps"] == 1 and stats["losses/skipped_minibatches"] == 0
    assert stats["losses/ratio_mean"] == pytest.approx((np.exp(2.0) + 15) / 16, rel=1e-4)
    assert stats["losses/ratio_max"] == pytest.approx(np.exp(2.0), rel=1e-4)


def test_reward_clip_bounds_the_episode_scores():
    agent = small_agent(make_env(), reward_clip=0.25, init_kl_coef=0.0, adaptive_kl=False)
    scores = [3.0, -3.0, 0.1, -0.1, 1.0, 0.0, 2.0, -2.0]
    _, stats = agent.make_batch(episodes_with(agent, lengths=[4] * 8, scores=scores))
    assert stats["objective/scores"] == pytest.approx(np.mean(np.clip(scores, -0.25, 0.25)))


def test_the_linear_schedule_anneals_over_each_learn_call():
    agent = small_agent(make_env(), learning_rate=1e-3)  # lr_schedule="linear" is the default
    rates = []
    agent.learn(total_episodes=24, callback=lambda a, stats: rates.append(stats["charts/learning_rate"]))
    assert rates == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    constant = small_agent(make_env(), learning_rate=1e-3, lr_schedule="constant")
    rates.clear()
    constant.learn(total_episodes=16, callback=lambda a, stats: rates.append(stats["charts/learning_rate"]))
    assert rates == pytest.approx([1e-3, 1e-3])


def test_weights_only_periodic_checkpoints_and_a_full_final_one(tmp_path):
    agent = small_agent(make_env(), run_dir=str(tmp_path), checkpoint_every=1, keep_checkpoints=3,
                        save_optimizer=False)
    agent.learn(total_episodes=24)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["iter_000001", "iter_000002", "iter_000003"]
    assert not (checkpoints / "iter_000002" / "optimizer.safetensors").exists()
    assert (checkpoints / "iter_000003" / "optimizer.safetensors").exists()  # the last one is complete
    with pytest.warns(UserWarning, match="no optimizer.safetensors.*afresh"):
        resumed = PPO.load(checkpoints / "iter_000002", make_env())
    assert resumed.num_iterations == 2 and not resumed.optimizer.state
    assert np.isfinite(resumed.train_iteration()["losses/policy_loss"])


def test_keep_checkpoints_keeps_that_many_on_disk(tmp_path):
    agent = small_agent(make_env(), run_dir=str(tmp_path), checkpoint_every=1, keep_checkpoints=2)
    agent.learn(total_episodes=32)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000003", "iter_000004"]


def test_the_bar_shows_the_phase_of_the_iteration(capsys):
    agent = small_agent(make_env(), progress=True, ppo_epochs=2)
    agent.learn(total_episodes=8)
    err = capsys.readouterr().err
    for phase in ("rollout", "log-probs", "update 1/2", "update 2/2", "reward="):
        assert phase in err, phase


def test_predict_follows_sb3_so_evaluate_policy_runs():
    env = make_env()
    agent = small_agent(env)
    obs, _ = env.reset(seed=0)
    action, state = agent.predict(obs, deterministic=True)
    assert state is None and np.ndim(action) == 0 and env.action_space.contains(int(action))
    with torch.no_grad():  # the most likely next token after the prompt, from a plain forward
        ids = torch.as_tensor(obs["input_ids"])[None]
        mask = torch.as_tensor(obs["attention_mask"])[None]
        logits = agent.policy.lm(input_ids=ids, attention_mask=mask,
                                 position_ids=position_ids(mask)).logits
    last = int(mask[0].nonzero().max())
    assert int(action) == int(logits[0, last, : agent.task.vocab_size].argmax())
    batched, _ = agent.predict({k: np.stack([v, v]) for k, v in obs.items()}, deterministic=True)
    assert batched.shape == (2,) and batched.tolist() == [int(action)] * 2
    mean, std = evaluate_policy(agent, Monitor(env), n_eval_episodes=2, deterministic=False)
    assert np.isfinite(mean) and np.isfinite(std)


def test_generate_takes_one_prompt_as_one_prompt():
    agent = small_agent(make_env())
    one = agent.generate("the movie was")
    assert isinstance(one, str) and one == agent.generate(["the movie was"])[0]
    assert len(agent.evaluate("a").completions) == 1


def test_learn_refuses_an_sb3_callback_with_what_it_accepts():
    class Sb3Callback(BaseCallback):
        def _on_step(self) -> bool:
            return True

    agent = small_agent(make_env())
    with pytest.raises(TypeError, match=r"callback\(agent, stats\).*SB3 BaseCallback"):
        agent.learn(total_episodes=8, callback=Sb3Callback())
    with pytest.raises(TypeError, match="got int"):
        agent.learn(total_episodes=8, callback=[print, 3])
    assert agent.num_iterations == 0


def test_top_k_is_refused_in_training_and_taken_by_evaluate():
    with pytest.raises(ValueError, match="top_k/top_p truncate the sampling distribution"):
        small_agent(make_env(), top_k=5)
    agent = small_agent(make_env())
    episodes = agent.evaluate(PROMPTS, top_k=1, temperature=1.0)  # top-1: the greedy completion
    assert episodes.completions == agent.evaluate(PROMPTS, temperature=0.0).completions
