"""The PPO agent on a tiny real model: rollout log-probs, one iteration, learning, checkpoints, Ctrl-C."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import patience
import pytest
import torch
from step_logits import sampled_logprobs, step_logits

from textenv.agents import PPO, PPOConfig, TrainingError, checkpoint
from textenv.agents.ppo_math import full_kl, masked_mean
from textenv.devices import keep_freed_cpu_memory
from textenv.envs import TextGenEnv
from textenv.generation import position_ids

PROMPTS = ["hello", "the movie was", "a", "once upon"]


def make_env(reward="length(target=4)", max_new_tokens=8):
    return gym.make("textenv/TextGen-v0", model="tiny-random", prompts=PROMPTS,
                    max_new_tokens=max_new_tokens, reward=reward)


def small_agent(env, **options):
    defaults = dict(batch_size=8, mini_batch_size=4, ppo_epochs=2, precision="fp32", progress=False, seed=0,
                    lr_schedule="constant")
    return PPO(env, **{**defaults, **options})


def test_config_checks_sizes_and_names():
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        PPOConfig(batch_size=10, mini_batch_size=4)
    with pytest.raises(ValueError, match="group_size"):
        PPOConfig(advantage="rloo", batch_size=8, mini_batch_size=4, group_size=3)
    with pytest.raises(TypeError, match="unknown PPO option.*lerning_rate"):
        PPOConfig.from_options({"lerning_rate": 1e-3})
    assert PPOConfig(mini_batch_size=8, gradient_accumulation_steps=4).micro_batch_size == 2
    with pytest.raises(ValueError, match="k1's gradient"):
        PPOConfig(kl_in_loss=True, kl_estimator="k1")
    with pytest.raises(ValueError, match="'full' needs kl_in_loss.*does not depend on the token"):
        PPOConfig(kl_estimator="full")
    assert PPOConfig(kl_in_loss=True).kl_estimator_used == "k2" and PPOConfig().kl_estimator_used == "k1"
    with pytest.raises(ValueError, match="temperature must be positive.*evaluate.*greedily"):
        PPOConfig(temperature=0.0)
    with pytest.raises(ValueError, match="0 < top_p <= 1"):
        PPOConfig(top_p=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_and_values_equal_a_step_by_step_recomputation(temperature):
    """The KV-cache rollout's logits, and the batch's log-probs and values, match a full forward at every step
    of a single env (in fp32); the log-probs are those of the temperature-scaled distribution the draws follow."""
    env = make_env()
    agent = small_agent(env, temperature=temperature)
    torch.nn.init.normal_(agent.policy.value_head.weight, std=0.5)  # non-trivial values
    with step_logits(agent.policy.lm) as seen:
        episodes = agent.rollout()
    cached = sampled_logprobs([s / temperature for s in seen], episodes.completion_ids, episodes.completion_mask,
                              agent.task.vocab_size)  # (N, T) from the rollout's KV-cache decoding
    batch, _ = agent.make_batch(episodes)  # the update's log-probs and values, from a batched forward
    lm = agent.policy.lm
    single = TextGenEnv(model="tiny-random", prompts=PROMPTS, max_new_tokens=8, reward="length(target=4)")
    for i, prompt in enumerate(episodes.prompts):
        obs, _ = single.reset(options={"prompt": prompt})
        for t in range(int(episodes.completion_mask[i].sum())):
            ids = torch.as_tensor(obs["input_ids"])[None]
            mask = torch.as_tensor(obs["attention_mask"])[None]
            with torch.no_grad():
                out = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                         output_hidden_states=True)
            last = int(single.task.prompt_width + t - 1)  # the position that predicts token t
            token = int(episodes.completion_ids[i, t])
            expected = torch.log_softmax(out.logits[0, last].float() / temperature, -1)[token]
            value = agent.policy.value_of_hidden(out.hidden_states[-1][0, last])
            assert cached[i, t].item() == pytest.approx(expected.item(), abs=1e-4)
            assert batch.logprobs[i, t].item() == pytest.approx(expected.item(), abs=1e-4)
            assert batch.values[i, t].item() == pytest.approx(value.item(), abs=1e-4)
            obs, reward, terminated, truncated, info = single.step(token)
        assert terminated or truncated
        assert reward == pytest.approx(episodes.rewards[i])


def test_the_batch_drops_the_padding_columns_of_every_row_and_keeps_the_logits():
    """Columns that are padding in every row are dropped once for the whole batch, and the logits stay."""
    agent = small_agent(make_env())
    agent.task.prompts = ["hello", "a", "once"]  # shorter than "the movie was", the longest of the task's prompts
    episodes = agent.rollout()
    batch, _ = agent.make_batch(episodes)
    full_width = episodes.prompt_ids.shape[1] + episodes.completion_ids.shape[1]
    assert batch.input_ids.shape[1] < full_width and bool(batch.attention_mask[:, 0].any())
    t = batch.tokens.shape[1]
    full_ids = torch.cat([episodes.prompt_ids, episodes.completion_ids], dim=1)
    full_mask = torch.cat([episodes.prompt_mask, episodes.completion_mask], dim=1)
    with torch.no_grad():
        full, _ = agent.policy(full_ids, full_mask, t)
        trimmed, _ = agent.policy(batch.input_ids, batch.attention_mask, t)
    assert torch.allclose(full, trimmed, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_before_any_step_every_micro_batch_has_ratio_one_and_an_identical_reference_kl_zero(precision):
    """The old log-probs come from the same kind of forward as the update's, in micro-batches of one width."""
    agent = small_agent(make_env(), precision=precision, batch_size=8, mini_batch_size=4,
                        gradient_accumulation_steps=2)
    assert_unchanged_policy_has_ratio_one_and_kl_zero(agent)


def assert_unchanged_policy_has_ratio_one_and_kl_zero(agent, epochs=2):
    batch, stats = agent.make_batch(agent.rollout())
    assert stats["objective/kl"] == 0.0 and torch.equal(batch.logprobs, batch.ref_logprobs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(epochs):  # shuffled as the update shuffles: other rows, same width
        for micro in torch.randperm(len(batch.tokens), generator=generator).split(agent.config.micro_batch_size):
            stats = agent._backward(batch.rows(micro))
            assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)  # k3 is 0 only where every ratio is 1
            assert stats["ratio_max"] == pytest.approx(1.0, abs=1e-6)
    agent.optimizer.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_smollm2_under_bf16_has_ratio_one_and_kl_zero_before_any_step():
    """SmolLM2 under bf16: the cached rollout's log-probs were off by up to 0.2 nats (ratio 0.986, KL 0.25 nats
    to an identical reference on 4 x 16 tokens); the batched recomputation makes both exact."""
    env = gym.make("textenv/TextGen-v0", model="smollm2-135m", reward="sentiment", max_new_tokens=16,
                   prompts=["hello", "the movie was a long and winding story of", "a", "once upon a time in a"])
    agent = PPO(env, batch_size=8, mini_batch_size=4, precision="bf16", progress=False, seed=0)
    assert agent.bf16
    assert_unchanged_policy_has_ratio_one_and_kl_zero(agent)


def test_under_bf16_autocast_the_reference_keeps_its_linear_weights_in_bf16_and_its_logits():
    agent = small_agent(make_env(), precision="bf16")
    ref = agent.reference
    linears = [m for m in ref.modules() if isinstance(m, torch.nn.Linear)]
    tied = ref.get_output_embeddings().weight is ref.get_input_embeddings().weight
    assert sum(m.weight.dtype == torch.bfloat16 for m in linears) == len(linears) - tied > 0
    assert ref.get_input_embeddings().weight.dtype == torch.float32
    ids = torch.randint(0, agent.task.vocab_size, (2, 12))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        stored_bf16 = ref(input_ids=ids).logits
        cast_each_time = agent.policy.lm(input_ids=ids).logits  # the same weights, fp32 (no step taken yet)
    assert torch.equal(stored_bf16, cast_each_time)


def test_one_iteration_changes_the_weights_and_logs_finite_losses():
    agent = small_agent(make_env(), learning_rate=1e-3)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    reference = [p.detach().clone() for p in agent.reference.parameters()]
    stats = agent.train_iteration()
    for key in ["charts/episodic_return", "objective/kl", "losses/policy_loss", "losses/value_loss",
                "losses/approx_kl", "losses/clipfrac", "losses/entropy", "perf/tokens_per_s", "reward/length"]:
        assert np.isfinite(stats[key]), key
    changed = [not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters())]
    assert all(changed)  # every tensor, the value head and the LM's, took a step
    assert all(torch.equal(a, b) for a, b in zip(reference, agent.reference.parameters()))
    assert agent.num_episodes == 8 and agent.num_iterations == 1


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_critic_free_advantages_train_without_a_value_head(advantage):
    agent = small_agent(make_env(), advantage=advantage, group_size=4, learning_rate=1e-3)
    assert agent.policy.value_head is None
    stats = agent.train_iteration()
    assert "losses/value_loss" not in stats and np.isfinite(stats["losses/policy_loss"])
    prompts = agent._draw_prompts(8)
    assert prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4


def test_without_a_kl_term_no_reference_is_kept():
    agent = small_agent(make_env(), advantage="grpo", group_size=4, init_kl_coef=0.0, adaptive_kl=False)
    assert agent.reference is None
    stats = agent.train_iteration()
    assert stats["objective/kl"] == 0.0 and np.isfinite(stats["losses/policy_loss"])


@pytest.mark.parametrize(("estimator", "share"), [("k2", 0.7), ("k3", 0.7), ("full", 0.3)])
def test_a_kl_term_in_the_loss_pulls_the_policy_back_to_the_reference(estimator, share):
    """With a reward that never fires, RLOO's advantages are zero: only the KL term in the loss moves the policy.
    Measured as the exact KL (over the vocabulary) on a fixed batch: the sampled k1 of 8 episodes is too noisy.
    The exact estimator pulls hardest, since it pulls every token, sampled or not."""
    env = make_env(reward="keyword(include=qqqzzzqqq)")
    agent = small_agent(env, advantage="rloo", group_size=4, kl_in_loss=True, init_kl_coef=1.0, adaptive_kl=False,
                        learning_rate=3e-3, kl_estimator=estimator, batch_size=32, mini_batch_size=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in agent.policy.lm.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a policy that has drifted from the reference
    probe, _ = agent.make_batch(agent.rollout())
    first = exact_kl_to_reference(agent, probe)
    history = [agent.train_iteration() for _ in range(6)]
    assert all(h["reward/keyword"] == 0.0 and h["losses/kl_loss"] > 0 for h in history)
    last = exact_kl_to_reference(agent, probe)
    assert first > 0.05 and last < share * first, (first, last)


def exact_kl_to_reference(agent, batch) -> float:
    """The mean over the batch's tokens of the exact KL(policy || reference) at each position."""
    t, vocab = batch.tokens.shape[1], agent.task.vocab_size
    with torch.no_grad():
        logits, _ = agent.policy(batch.input_ids, batch.attention_mask, t, values=False)  # (B, T, V')
        ref = agent.reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=position_ids(batch.attention_mask)).logits
    ref_logp = torch.log_softmax(ref[:, -t - 1 : -1, :vocab].float(), -1)  # (B, T, V)
    return float(masked_mean(full_kl(logits[..., :vocab], ref_logp), batch.mask))


def test_freed_cpu_memory_is_reused_without_page_faults():
    """After keep_freed_cpu_memory a freed 64 MB tensor's pages come back without faulting (16k faults otherwise)."""
    if not keep_freed_cpu_memory():
        pytest.skip("not glibc on Linux")

    def faults_of_a_64mb_tensor() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(16 * 2**20)  # 64 MB, every page written
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    counts = [faults_of_a_64mb_tensor() for _ in range(5)]
    assert min(counts[-3:]) < 1_000, counts


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_separate_value_model_trains(precision):
    agent = small_agent(make_env(), value_model="separate", learning_rate=1e-3, precision=precision)
    assert agent.policy.value_model is not None
    stats = agent.train_iteration()
    assert np.isfinite(stats["losses/value_loss"])


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_the_critic_learns_at_its_own_rate(value_model):
    agent = small_agent(make_env(), value_model=value_model, learning_rate=1e-3, value_learning_rate=0.0)
    critic = [m for m in (agent.policy.value_head, agent.policy.value_model) if m is not None]
    critic_before = [p.detach().clone() for m in critic for p in m.parameters()]
    lm_before = [p.detach().clone() for p in agent.policy.lm.parameters()]
    agent.train_iteration()
    assert all(torch.equal(a, b) for a, b in zip(critic_before, (p for m in critic for p in m.parameters())))
    assert all(not torch.equal(a, b) for a, b in zip(lm_before, agent.policy.lm.parameters()))


def test_a_tiny_model_learns_a_simple_critic(lowercase_critic):
    """Learning, not only running: the share of lowercase letters rises to a clear margin."""
    env = make_env(reward=lowercase_critic, max_new_tokens=8)
    agent = small_agent(env, batch_size=16, mini_batch_size=8, ppo_epochs=4, learning_rate=1e-2,
                        init_kl_coef=0.01, seed=1)
    prompts = PROMPTS * 8
    before = agent.evaluate(prompts, seed=0).rewards.mean()
    agent.learn(total_episodes=16 * 15)
    after = agent.evaluate(prompts, seed=0).rewards.mean()
    assert before < 0.15  # random bytes: about 26/384 of them lowercase
    assert after > before + 0.4, (before, after)


def test_an_entropy_bonus_holds_the_entropy_up(lowercase_critic):
    entropies = {}
    for ent_coef in (0.0, 0.2):
        agent = small_agent(make_env(reward=lowercase_critic), batch_size=16, mini_batch_size=8, learning_rate=1e-2,
                            init_kl_coef=0.0, adaptive_kl=False, ent_coef=ent_coef, seed=1)
        history = [agent.train_iteration()["losses/entropy"] for _ in range(6)]
        entropies[ent_coef] = history[-1]
    assert entropies[0.2] > entropies[0.0] + 0.3, entropies


def test_learning_rates_fall_linearly_to_zero_over_lr_decay_episodes():
    agent = small_agent(make_env(), learning_rate=1e-3, value_learning_rate=4e-3, lr_decay_episodes=32)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    for k in range(4):
        assert agent.train_iteration()["charts/learning_rate"] == pytest.approx(1e-3 * (1 - 8 * k / 32))
        assert agent.optimizer.param_groups[1]["lr"] == pytest.approx(4e-3 * (1 - 8 * k / 32))
    after = [p.detach().clone() for p in agent.policy.parameters()]
    agent.train_iteration()  # episode 32: the rate is 0, so Adam leaves the weights where they are
    assert agent.optimizer.param_groups[0]["lr"] == 0.0
    assert all(torch.equal(a, p) for a, p in zip(after, agent.policy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="lr_decay_episodes must be positive"):
        PPOConfig(lr_decay_episodes=0)


def test_checkpoint_then_resume_gives_the_same_next_iteration(tmp_path):
    kwargs = dict(learning_rate=1e-3, run_dir=str(tmp_path / "run"), checkpoint_every=0, reward_norm=True,
                  lr_decay_episodes=40)
    agent = small_agent(make_env(), **kwargs)
    agent.learn(total_episodes=16)
    path = agent.save(tmp_path / "ckpt")
    expected = agent.train_iteration()

    resumed = PPO.load(path, make_env(), run_dir=str(tmp_path / "run2"))
    assert resumed.num_iterations == 2 and resumed.num_episodes == 16
    got = resumed.train_iteration()
    assert got["charts/learning_rate"] == pytest.approx(1e-3 * (1 - 16 / 40))
    for key in ["charts/episodic_return", "objective/kl", "losses/policy_loss", "losses/value_loss",
                "losses/approx_kl", "objective/kl_coef"]:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_whose_optimizer_does_not_fit_is_refused_by_name(tmp_path):
    gae = small_agent(make_env()).save(tmp_path / "gae")
    rloo = small_agent(make_env(), advantage="rloo", group_size=2).save(tmp_path / "rloo")
    name = "optimizer.safetensors"
    (gae / name).write_bytes((rloo / name).read_bytes())  # one group where GAE has two
    with pytest.raises(ValueError, match=rf"gae/{name}: \d+ bytes where the manifest says \d+ \(truncated or "):
        PPO.load(gae, make_env())  # the manifest catches it first; sealed again, the load itself names it
    checkpoint.seal(gae)
    with pytest.raises(ValueError, match=rf"gae/{name} holds 1 parameter group\(s\) where this agent has 2"):
        PPO.load(gae, make_env())


def test_run_directory_holds_events_samples_curve_and_checkpoints(tmp_path):
    agent = small_agent(make_env(), run_dir=str(tmp_path), checkpoint_every=2, sample_every=1, keep_checkpoints=1)
    agent.learn(total_episodes=24)
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3 * 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000003"]
    ckpt = tmp_path / "checkpoints" / "iter_000003"
    assert (ckpt / "model" / "model.safetensors").exists() and (ckpt / "value.safetensors").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"charts/episodic_return", "objective/kl", "losses/policy_loss", "losses/value_loss",
            "losses/approx_kl", "losses/clipfrac", "losses/entropy", "perf/tokens_per_s", "reward/length"} <= tags


def test_a_callback_sees_each_iteration_and_can_stop_the_run(tmp_path):
    seen, returns = [], []

    def record(agent, stats):  # returns None: never stops
        seen.append((agent.num_iterations, stats["episodes"]))

    def stop_at_target(agent, stats):
        returns.append(stats["charts/episodic_return"])
        return agent.num_iterations < 2

    agent = small_agent(make_env(), run_dir=str(tmp_path), checkpoint_every=0)
    agent.learn(total_episodes=8 * 5, callback=[record, stop_at_target])
    assert seen == [(1, 8.0), (2, 16.0)] and len(returns) == 2 and all(np.isfinite(returns))
    assert agent.num_episodes == 16
    assert (tmp_path / "checkpoints" / "iter_000002" / "trainer_state.json").exists()  # ended as a full run does
    assert (tmp_path / "reward_curve.png").exists()
    agent.learn(total_episodes=8, callback=record)  # a single callable works too
    assert seen[-1] == (3, 24.0)


def test_a_nonfinite_loss_stops_with_a_clear_error_and_a_loadable_checkpoint(tmp_path):
    agent = small_agent(make_env(), run_dir=str(tmp_path), checkpoint_every=0)
    with torch.no_grad():
        agent.policy.value_head.bias.fill_(float("nan"))  # a critic gone bad
    with pytest.raises(TrainingError, match=r"iteration 1: the loss is nan.*saved in .*last-good"):
        agent.train_iteration()
    restored = PPO.load(tmp_path / "checkpoints" / "last-good", make_env())
    assert all(torch.isfinite(p).all() for p in restored.policy.lm.parameters())


def test_a_nan_reward_stops_with_the_source_named_and_the_last_good_state_saved(tmp_path):
    """The last-good checkpoint is the end of iteration 2, draws and statistics included: with the
    source fixed, resuming from it gives the iteration 3 of a run that never broke."""
    import textenv

    broken = []

    @textenv.reward(name="breaks_later")
    def breaks_later(completions):
        return [float("nan") if broken else 0.5 + 0.1 * len(c) for c in completions]

    def break_after_two(agent, stats):
        if agent.num_iterations == 2:
            broken.append(True)

    reward = "length(target=4, normalize=true) + breaks_later"  # the first term's statistics move each batch
    try:
        agent = small_agent(make_env(reward=reward), run_dir=str(tmp_path / "run"), checkpoint_every=0)
        with pytest.raises(TrainingError, match=r"iteration 3: reward source 'breaks_later' returned nan for "
                                                r"completion #0.*last good iteration is saved in .*last-good"):
            agent.learn(total_episodes=8 * 5, callback=break_after_two)
        restored = PPO.load(tmp_path / "run" / "checkpoints" / "last-good", make_env(reward=reward))
        assert restored.num_iterations == 2
        for a, b in zip(agent.policy.parameters(), restored.policy.parameters()):
            torch.testing.assert_close(a, b)

        broken.clear()  # the plugin fixed
        got = restored.train_iteration()
        unbroken = small_agent(make_env(reward=reward))
        unbroken.learn(total_episodes=16)
        expected = unbroken.train_iteration()
    finally:
        textenv.unregister_reward("breaks_later")
    for key in ["charts/episodic_return", "reward/length", "objective/kl", "losses/policy_loss",
                "losses/value_loss"]:  # (two agents' float sums differ in the last bits)
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_sigint_leaves_a_checkpoint_that_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "textenv.cli", "train", "--model", "tiny-random", "--iterations", "200",
           "--batch-size", "4", "--mini-batch-size", "4", "--group-size", "2", "--max-new-tokens", "4",
           "--eval-prompts", "0",
           "--output-dir", str(run), "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    samples = run / "samples.jsonl"  # written at the end of each iteration
    patience.wait_until(lambda: proc.poll() is not None or (samples.exists() and samples.stat().st_size > 0),
                        what="the first iteration", progress=[lambda: patience.cpu_seconds(proc.pid)])
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, _ = patience.communicate(proc)
    assert proc.returncode == 130, out  # interrupted, with a checkpoint: not the exit of a finished run
    done = int(re.search(r"interrupted after iteration (\d+)", out).group(1))
    assert 0 < done < 200
    checkpoint = run / "checkpoints" / f"iter_{done:06d}"
    assert (checkpoint / "trainer_state.json").exists()
    cmd[cmd.index("--iterations") + 1] = str(done + 2)  # the run's total: two more iterations
    resumed = patience.run(cmd + ["--resume", str(run)], env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {checkpoint}" in resumed.stdout
    assert (run / "checkpoints" / f"iter_{done + 2:06d}" / "trainer_state.json").exists()


def test_evaluate_leaves_the_reward_statistics_alone():
    """A normalized term's running statistics learn from training batches only, so evaluating twice
    gives the same rewards and changes nothing a checkpoint holds."""
    agent = small_agent(make_env(reward="length(target=4, normalize=true)"))
    before = agent.task.rewards.state_dict()
    first, second = agent.evaluate(PROMPTS), agent.evaluate(PROMPTS)
    np.testing.assert_array_equal(first.rewards, second.rewards)
    assert agent.task.rewards.state_dict() == before


def test_a_model_given_to_ppo_stays_the_reference_after_resuming(tmp_path):
    from textenv.models import load_causal_lm

    tuned = load_causal_lm("tiny-random", dtype=torch.float32)
    with torch.no_grad():
        for p in tuned.parameters():  # as an SFT model differs from the env's base model
            p.add_(0.05 * torch.randn_like(p))
    agent = small_agent(make_env(), model=tuned)
    path = agent.save(tmp_path / "ckpt")
    restored = PPO.load(path, make_env())
    for a, b in zip(agent.reference.parameters(), restored.reference.parameters()):
        torch.testing.assert_close(a, b)
    assert not (small_agent(make_env()).save(tmp_path / "base") / "reference").exists()  # the env's model: no copy


def test_load_takes_the_learning_rates_and_eps_of_its_config(tmp_path):
    path = small_agent(make_env(), learning_rate=1e-4).save(tmp_path / "ckpt")
    restored = PPO.load(path, make_env(), learning_rate=1e-3, value_learning_rate=2e-3, adam_eps=1e-6)
    assert [(g["lr"], g["eps"]) for g in restored.optimizer.param_groups] == [(1e-3, 1e-6), (2e-3, 1e-6)]


@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-untied"])
def test_a_separate_value_model_is_the_decoder_without_an_lm_head_and_saves_and_loads(tmp_path, model):
    env = gym.make("textenv/TextGen-v0", model=model, prompts=PROMPTS, max_new_tokens=8, reward="length(target=4)")
    agent = small_agent(env, value_model="separate")
    critic = agent.policy.value_model
    assert not any("lm_head" in name for name, _ in agent.policy.named_parameters() if not name.startswith("lm."))
    assert sum(p.numel() for p in critic.parameters()) == sum(p.numel() for p in agent.policy.lm.model.parameters())
    with torch.no_grad():
        critic.get_input_embeddings().weight.add_(0.1)  # differs from the policy's trunk
    restored = PPO.load(agent.save(tmp_path / "ckpt"), env)
    for a, b in zip(agent.policy.value_model.parameters(), restored.policy.value_model.parameters()):
        torch.testing.assert_close(a, b)
    agent.train_iteration()
    assert all(p.grad is not None for p in critic.parameters())  # every critic weight is used (DDP needs it)


def test_the_kl_in_the_loss_ignores_positions_past_the_end():
    """After an early EOS the stored reference log-prob is 0 and the policy's of the padding can be
    anything: k3 there overflowed to inf and made a NaN gradient."""
    agent = small_agent(make_env(), kl_in_loss=True)

    def eos_likely_padding_unlikely(module, inputs, logits):
        logits = logits.clone()
        logits[..., 1] += 3.0  # EOS (id 1): episodes end early
        logits[..., 0] -= 100.0  # the padding id after the end
        return logits

    agent.policy.lm.get_output_embeddings().register_forward_hook(eos_likely_padding_unlikely)
    stats = agent.train_iteration()
    assert stats["charts/episodic_length"] < 8 and np.isfinite(stats["losses/kl_loss"])


def test_gradient_accumulation_gives_the_gradient_of_the_whole_mini_batch():
    """Each micro-batch weighs by its tokens, so episodes of unequal lengths split any way give one gradient."""
    agent = small_agent(make_env(), batch_size=4, mini_batch_size=4)
    torch.nn.init.normal_(agent.policy.value_head.weight, std=0.5)
    agent.policy.lm.get_output_embeddings().register_forward_hook(
        lambda module, inputs, logits: logits + 5.0 * (torch.arange(logits.shape[-1]) == 1))  # EOS: p ~ 0.3 a step
    batch, _ = agent.make_batch(agent.rollout())
    assert len(set(batch.mask.sum(1).tolist())) > 1  # unequal lengths

    def gradient(micro_size):
        agent.optimizer.zero_grad(set_to_none=True)
        rows = torch.arange(4)
        for micro in rows.split(micro_size):
            agent._backward(batch.rows(micro), batch.mask[micro].sum() / batch.mask.sum())
        return torch.cat([p.grad.flatten() for p in agent.policy.parameters() if p.grad is not None])

    torch.testing.assert_close(gradient(2), gradient(4), rtol=1e-4, atol=1e-6)


def test_dropout_is_off_in_the_update_so_the_first_ratio_is_one():
    agent = small_agent(make_env(), learning_rate=0.0, ppo_epochs=1)
    for module in agent.policy.lm.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5  # as a model configured with attention dropout
    stats = agent.train_iteration()
    assert stats["losses/ratio_max"] == pytest.approx(1.0, abs=1e-5) and stats["losses/approx_kl"] < 1e-8


def test_values_stay_float32_under_bf16_autocast():
    policy = small_agent(make_env()).policy
    torch.nn.init.normal_(policy.value_head.weight, std=0.5)
    hidden = torch.randn(3, 5, policy.value_head.in_features)  # (B, T, H)
    expected = policy.value_head(hidden).squeeze(-1)  # (B, T) fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = policy.value_of_hidden(hidden)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_the_history_stays_bounded_on_long_runs_and_still_spans_the_run(monkeypatch):
    monkeypatch.setattr("textenv.agents.ppo.HISTORY_LIMIT", 4)
    agent = small_agent(make_env())
    agent.learn(total_episodes=10 * agent.config.batch_size)
    episodes = [h["episodes"] for h in agent.history]
    assert len(episodes) <= 4
    assert episodes[0] == agent.config.batch_size and episodes[-1] == agent.num_episodes  # first and last kept
    assert episodes == sorted(episodes)


def test_with_a_person_at_the_terminal_training_prints_a_line_per_iteration_and_no_bar(fresh_default_pm, capsys):
    """A bar (tqdm, on stderr) would print into the screen where the human source streams completions."""
    import textenv
    from textenv.rewards import RewardSource

    class AtTheTerminal(RewardSource):
        interactive = True

    class Plugin:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            return [AtTheTerminal("person", lambda completions: [0.0] * len(completions), origin="test")]

    fresh_default_pm.register(Plugin())
    agent = small_agent(make_env(reward="person + length(target=4)"), progress=True)
    assert agent.task.rewards.interactive
    agent.learn(total_episodes=2 * agent.config.batch_size)
    out, err = capsys.readouterr()
    assert "PPO" not in err and "it/s" not in err
    assert re.findall(r"PPO iteration (\d)/2: reward=", out) == ["1", "2"]


def test_learn_with_sb3s_total_timesteps_says_that_textenv_counts_episodes():
    agent = small_agent(make_env())
    with pytest.raises(TypeError, match=r"counts episodes, not timesteps: give total_episodes= instead of "
                                        r"total_timesteps="):
        agent.learn(total_timesteps=1000)
    with pytest.raises(TypeError, match="give reset_num_episodes= instead of reset_num_timesteps="):
        agent.learn(8, reset_num_timesteps=False)
    assert agent.num_iterations == 0
