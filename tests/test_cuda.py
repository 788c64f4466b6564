"""The CUDA path: bf16 autocast, a rollout on the device with no device read of the loop's own, the
preallocated KV cache, a PPO iteration; and the GPU check's CPU side.

The tests marked ``cuda`` skip without CUDA (``benchmarks/gpu_check.sh`` runs them on a GPU machine);
the others check, here, what does not depend on the device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_module import load_benchmark
from patience import run
from step_logits import sampled_logprobs, step_logits

from textenv.devices import autocast, use_bf16
from textenv.envs import TextGenVectorEnv
from textenv.generation import SamplingConfig, generate_episodes, next_tokens, position_ids
from textenv.models import load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()


def cuda_test(test):
    """Mark a test as needing CUDA, and skip it cleanly without."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")(test))


def _gpu_check():
    return load_benchmark("gpu_check")


def _count_syncs(fn) -> int:
    """How many times ``fn`` made the host wait on the device (torch's sync debug mode warns at each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# ------------------------------------------------------------------ device-independent


def test_known_cards_are_told_apart_by_nvidia_smis_name():
    check = _gpu_check()
    assert check.card_for("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert check.card_for("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert check.card_for("NVIDIA H100 NVL").name == "H100 NVL"
    assert check.card_for("NVIDIA H200").bandwidth == 4.8e12
    assert check.card_for("NVIDIA A100-SXM4-80GB").bandwidth == 2.039e12
    assert check.card_for("NVIDIA L40S").name == "L40S" and check.card_for("NVIDIA L4").name == "L4"
    assert check.card_for("NVIDIA GeForce GTX 1080") is None


def test_the_floor_and_mfu_arithmetic():
    check = _gpu_check()
    # 1 GB of weights at 2 TB/s: 2000 decode steps a second, each yielding a batch of 16 tokens
    assert check.floor_tokens_per_s(1e9, 16, 2e12) == pytest.approx(32_000)
    # 6 * 1e9 params * 1e4 tokens = 6e13 FLOPs in 0.2 s = 3e14 FLOP/s, of a 1e15 peak
    assert check.model_flops_utilization(1e9, 1e4, 0.2, 1e15) == pytest.approx(0.3)


@pytest.mark.skipif(HAS_CUDA, reason="with CUDA the script runs the full check, not its CPU side")
def test_gpu_check_says_it_found_no_gpu_and_runs_its_cpu_side():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "found no NVIDIA GPU" in done.stdout
    assert "growing cache" in done.stdout and "static  cache" in done.stdout and "PPO step" in done.stdout


def test_gpu_check_sh_is_executable_bash():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


# ------------------------------------------------------------------ on CUDA


@cuda_test
def test_bf16_autocast_is_on_for_cuda_where_the_card_has_it():
    device = torch.device("cuda")
    assert use_bf16(device, "auto") == torch.cuda.is_bf16_supported()
    layer = torch.nn.Linear(8, 8, device=device)
    with autocast(device, True):
        out = layer(torch.randn(2, 8, device=device))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32  # fp32 master weights


@cuda_test
def test_a_rollout_on_cuda_stays_on_the_device_and_its_logprobs_match_a_full_forward(tiny_options):
    device = torch.device("cuda")
    model = load_causal_lm("tiny-random", device=device, dtype=torch.float32)
    env = TextGenVectorEnv(4, device=device, autoreset_mode="Disabled", **{**tiny_options, "max_new_tokens": 8})
    with torch.no_grad(), autocast(device, True):
        with step_logits(model) as seen:
            episodes = generate_episodes(model, env, seed=0)
        cached = sampled_logprobs(seen, episodes.completion_ids, episodes.completion_mask, env.task.vocab_size)
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "token_rewards"):
            assert getattr(episodes, name).device.type == "cuda", name
        # The same log-probs from one forward over prompt + completion (PPO's kind of forward).
        ids = torch.cat([episodes.prompt_ids, episodes.completion_ids], 1)  # (N, P + T)
        mask = torch.cat([episodes.prompt_mask, episodes.completion_mask], 1)  # (N, P + T)
        positions = position_ids(mask)  # (N, P + T)
        width, vocab = env.task.prompt_width, env.task.vocab_size
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits  # (N, P + T, V')
        logp = torch.log_softmax(logits[:, width - 1 : -1, :vocab].float(), -1)  # (N, T, V)
        full = logp.gather(-1, episodes.completion_ids[..., None]).squeeze(-1) * episodes.completion_mask  # (N, T)
    torch.testing.assert_close(cached, full, rtol=0, atol=5e-2)  # bf16: two kinds of sums
    assert np.isfinite(episodes.rewards).all()


@cuda_test
def test_a_static_cache_on_cuda_picks_the_growing_caches_tokens(tiny_options):
    device = torch.device("cuda")
    model = load_causal_lm("tiny-random", device=device, dtype=torch.float32)
    env = TextGenVectorEnv(6, device=device, autoreset_mode="Disabled",
                           **{**tiny_options, "max_new_tokens": 10, "eos_token_ids": list(range(0, 384, 8))})
    greedy = SamplingConfig(temperature=0.0)
    logprobs = []
    with torch.no_grad():  # fp32: the longer masked sums of the static cache round like the short ones
        for static_cache in (False, True):
            with step_logits(model) as seen:
                episodes = generate_episodes(model, env, sampling=greedy, seed=1, static_cache=static_cache)
            logprobs.append((episodes, sampled_logprobs(seen, episodes.completion_ids, episodes.completion_mask,
                                                        env.task.vocab_size)))
    (growing, growing_logprobs), (static, static_logprobs) = logprobs
    assert torch.equal(growing.completion_ids, static.completion_ids)
    torch.testing.assert_close(static_logprobs, growing_logprobs, rtol=0, atol=1e-4)


@cuda_test
def test_the_token_loop_adds_no_device_sync_of_its_own(tiny_options):
    """Per extra token, a rollout waits on the device exactly as often as its parts do: the env's step
    (once: which rows ended), the model's decode forward and the sampler; the loop itself adds none."""
    device = torch.device("cuda")
    model = load_causal_lm("tiny-random", device=device, dtype=torch.float32)
    options = {**tiny_options, "eos_token_ids": []}  # every row runs to the limit: one scoring, at the end

    def rollout(tokens: int) -> int:
        env = TextGenVectorEnv(4, device=device, autoreset_mode="Disabled", **{**options, "max_new_tokens": tokens})
        with torch.no_grad():
            return _count_syncs(lambda: generate_episodes(model, env, seed=0))

    per_token = (rollout(12) - rollout(4)) / 8

    env = TextGenVectorEnv(4, device=device, autoreset_mode="Disabled", **{**options, "max_new_tokens": 12})
    obs, _ = env.reset(seed=0)
    width = env.task.prompt_width
    ids, mask = obs["input_ids"][:, :width], obs["attention_mask"][:, :width]  # (N, P)
    positions = position_ids(mask)  # (N, P)
    generator = torch.Generator(device=device).manual_seed(0)
    sampling = SamplingConfig()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        actions = next_tokens(out.logits[:, -1, : env.task.vocab_size], sampling, sampling.warpers(), generator)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)  # (N, P + 1)
        step = dict(input_ids=actions[:, None], attention_mask=mask, position_ids=positions[:, -1:] + 1,
                    cache=out.cache, use_cache=True)
        decoded = []
        forward = _count_syncs(lambda: decoded.append(model(**step)))  # the cache grows once, as in the loop
        logits = decoded[0].logits[:, -1, : env.task.vocab_size]  # (N, V)
        sampler = _count_syncs(lambda: next_tokens(logits, sampling, sampling.warpers(), generator))
    env_step = _count_syncs(lambda: env.step(actions))
    assert env_step == 1  # which rows ended (and whether an action was bad), in one read
    assert per_token == env_step + forward + sampler


@cuda_test
def test_a_ppo_iteration_runs_on_cuda_in_bf16():
    import gymnasium as gym

    from textenv.agents import PPO

    env = gym.make("textenv/TextGen-v0", model="tiny-random", prompts=["hello", "the movie was", "a"],
                   max_new_tokens=6, reward="length(target=3)")
    agent = PPO(env, batch_size=4, mini_batch_size=2, device="cuda", progress=False, seed=0)
    assert agent.bf16 == torch.cuda.is_bf16_supported()
    assert all(p.device.type == "cuda" for p in agent.policy.parameters())
    stats = agent.train_iteration()
    assert all(np.isfinite(v) for v in stats.values()), stats
