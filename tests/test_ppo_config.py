"""PPOConfig refuses every invalid option when it is built, naming it; the KL estimator in the loss is k2."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from textenv.agents import PPOConfig
from textenv.agents.ppo_math import kl_penalty

INVALID = [
    ("batch_size", 0), ("mini_batch_size", 0), ("gradient_accumulation_steps", 0), ("ppo_epochs", 0),
    ("learning_rate", -1e-5), ("learning_rate", math.nan), ("learning_rate", math.inf), ("value_learning_rate", -1.0),
    ("lr_schedule", "cosine"), ("lr_decay_episodes", 0), ("adam_eps", 0.0),
    ("max_grad_norm", -1.0), ("gamma", 1.5), ("gamma", -0.1), ("lam", 1.01), ("cliprange", 0.0),
    ("cliprange_value", 0.0), ("vf_coef", -0.5), ("ent_coef", -0.01), ("ratio_threshold", 1.0), ("target_kl", 0.0),
    ("init_kl_coef", -0.1), ("kl_target", 0.0), ("kl_horizon", 0), ("kl_estimator", "k4"), ("reward_clip", 0.0),
    ("advantage", "ppo"), ("group_size", 0), ("value_model", "own"), ("temperature", 0.0), ("top_k", -1),
    ("top_p", 0.0), ("device", "gpu"), ("device", "cuda:x"), ("precision", "fp16"), ("seed", -1),
    ("checkpoint_every", -1), ("keep_checkpoints", 0), ("sample_every", -1),
    ("batch_size", 64.0), ("whiten_advantages", "yes"), ("progress", 1), ("run_dir", 3),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_an_invalid_option_is_refused_when_the_config_is_built_naming_it(name, value):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        PPOConfig(**{name: value})


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(PPOConfig)])
def test_every_option_refuses_a_value_of_the_wrong_kind(name):
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        PPOConfig(**{name: object()})


def test_the_defaults_are_a_valid_config_and_none_takes_the_place_of_optional_values():
    config = PPOConfig(value_learning_rate=None, max_grad_norm=None, cliprange_value=None, kl_estimator=None)
    assert config.value_learning_rate is None
    assert PPOConfig(ratio_threshold=math.inf).ratio_threshold == math.inf  # inf turns the guard off
    assert PPOConfig(learning_rate=1).learning_rate == 1  # an int is a fine float
    assert PPOConfig(learning_rate=0.0).learning_rate == 0  # a frozen policy (the critic learns alone)


@pytest.mark.parametrize("options", [dict(top_k=50), dict(top_p=0.9)])
def test_top_k_and_top_p_are_refused_in_training(options):
    with pytest.raises(ValueError, match=r"truncate the sampling distribution while PPO's ratio and KL use the full "
                                         r"one; train at top_k=0, top_p=1.0 and use them in evaluate\(\)/generate\(\)"):
        PPOConfig(**options)


def test_an_adaptive_controller_cannot_start_from_a_zero_weight():
    with pytest.raises(ValueError, match="adaptive_kl needs init_kl_coef > 0.*adaptive_kl=False"):
        PPOConfig(init_kl_coef=0.0)
    assert not PPOConfig(init_kl_coef=0.0, adaptive_kl=False).uses_reference


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_is_refused_where_there_is_none(device):
    with pytest.raises(ValueError, match=rf"device '{device}' was asked for but torch.cuda.is_available\(\) is False"):
        PPOConfig(device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_past_the_last_device_is_refused():
    assert PPOConfig(device="cuda:0").device == "cuda:0"
    with pytest.raises(ValueError, match=r"device 'cuda:99' was asked for but there are \d+ CUDA device"):
        PPOConfig(device="cuda:99")


def test_the_kl_estimator_is_k1_in_the_reward_and_k2_in_the_loss():
    assert PPOConfig().kl_estimator_used == "k1"
    assert PPOConfig(kl_in_loss=True).kl_estimator_used == "k2"
    assert PPOConfig(kl_in_loss=True, kl_estimator="k3").kl_estimator_used == "k3"


def test_k2_in_the_loss_follows_the_kl_to_the_reference_and_k3_the_reverse_kl():
    """The expected gradient of each estimator over tokens sampled from the policy, computed exactly over a
    small vocabulary, against the gradients of both KLs: the reason k2 is the default in the loss."""
    gen = torch.Generator().manual_seed(0)
    ref_logprobs = torch.randn(7, generator=gen).log_softmax(-1)  # (V,)
    logits = torch.randn(7, generator=gen)  # (V,) the policy's parameters

    def gradient(loss_of) -> torch.Tensor:
        theta = logits.clone().requires_grad_()
        loss_of(theta.log_softmax(-1)).backward()
        return theta.grad

    def expected_estimator_gradient(estimator: str) -> torch.Tensor:  # sampling weights p are not differentiated
        return gradient(lambda logp: (logp.exp().detach() * kl_penalty(logp, ref_logprobs, estimator)).sum())

    forward_kl = gradient(lambda logp: (logp.exp() * (logp - ref_logprobs)).sum())  # KL(policy || reference)
    reverse_kl = gradient(lambda logp: (ref_logprobs.exp() * (ref_logprobs - logp)).sum())  # KL(reference || policy)
    torch.testing.assert_close(expected_estimator_gradient("k2"), forward_kl)
    torch.testing.assert_close(expected_estimator_gradient("k3"), reverse_kl)
    assert not torch.allclose(forward_kl, reverse_kl, atol=1e-3)  # the two pulls differ here
    torch.testing.assert_close(expected_estimator_gradient("k1"), torch.zeros(7), atol=1e-6, rtol=0)


def test_unknown_options_are_named():
    with pytest.raises(TypeError, match="unknown PPO option.*lerning_rate"):
        PPOConfig.from_options({"lerning_rate": 1e-3})
