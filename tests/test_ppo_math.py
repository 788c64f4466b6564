"""The pure math of token-level PPO against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from textenv.agents.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    entropy_from_logits,
    full_kl,
    group_advantages,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)

NAN, INF = float("nan"), float("inf")


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    """Assert ``actual`` equals ``expected`` (a number or nested list) elementwise."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ----------------------------------------------------------------------------------
# Masked statistics


def test_masked_mean_ignores_masked_out_entries_even_nan_and_inf():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, INF, -INF]])  # (2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # (2, 3)
    close(masked_mean(x, mask), (1 + 2 + 4) / 3)
    close(masked_mean(x, mask, dim=1), [(1 + 2) / 2, 4.0])
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)  # empty: 0, not NaN


def test_masked_var_by_hand():
    x = torch.tensor([[1.0, 2.0, 99.0], [4.0, NAN, 99.0]])  # (2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # (2, 3)
    # Entries 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9.
    close(masked_var(x, mask, unbiased=False), 42 / 9 / 3)
    close(masked_var(x, mask, unbiased=True), 42 / 9 / 2)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.tensor([[1.0, 0, 0], [0, 0, 0]]))


def test_masked_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])  # (1, 4) the last entry is past the end
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # (1, 4)
    # mean 2, unbiased variance ((-1)^2 + 0 + 1^2) / 2 = 1
    close(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], atol=1e-6)
    close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], atol=1e-6)


def test_masked_whiten_zero_mean_unit_variance_over_the_mask():
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(4, 7, generator=gen)  # (4, 7)
    lengths = torch.tensor([7, 3, 1, 5])  # (4,)
    mask = (torch.arange(7) < lengths[:, None]).float()  # (4, 7)
    x[mask == 0] = 1e6  # garbage past the end must not leak into the statistics
    white = masked_whiten(x, mask)  # (4, 7)
    real = white[mask.bool()]  # (16,)
    assert real.numel() == 16
    assert abs(real.mean().item()) < 1e-5
    assert abs(real.var(unbiased=True).item() - 1.0) < 1e-4
    assert torch.all(white[mask == 0] == 0)
    # the ordering of the real entries is kept (whitening is an increasing affine map)
    assert torch.equal(real.argsort(), x[mask.bool()].argsort())

    kept = masked_whiten(x, mask, shift_mean=False)  # (4, 7)
    original_mean = x[mask.bool()].mean().item()
    assert abs(kept[mask.bool()].mean().item() - original_mean) < 1e-4
    assert abs(kept[mask.bool()].var().item() - 1.0) < 1e-4


# ----------------------------------------------------------------------------------
# Log-probabilities and entropy


def test_logprobs_and_entropy_from_logits_by_hand():
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0], [math.log(1), math.log(2), math.log(3)]]]
    )  # (1, 2, 3): uniform, then probabilities 1/6, 2/6, 3/6
    tokens = torch.tensor([[1, 2]])  # (1, 2)
    close(logprobs_from_logits(logits, tokens), [[-math.log(3), math.log(3 / 6)]])
    p = [1 / 6, 2 / 6, 3 / 6]
    close(entropy_from_logits(logits), [[math.log(3), -sum(q * math.log(q) for q in p)]])


def test_logprobs_from_bf16_logits_are_float32():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 11, generator=gen).to(torch.bfloat16)  # (2, 3, 11)
    tokens = torch.randint(0, 11, (2, 3), generator=gen)  # (2, 3)
    logp = logprobs_from_logits(logits, tokens)  # (2, 3)
    assert logp.dtype == torch.float32
    expected = torch.log_softmax(logits.double(), -1).gather(-1, tokens[..., None])[..., 0]
    close(logp, expected.float(), atol=1e-6)
    # a near-one-hot distribution has (near) zero entropy
    peaked = torch.tensor([[[50.0, 0.0, 0.0]]])  # (1, 1, 3)
    assert entropy_from_logits(peaked).item() < 1e-6


# ----------------------------------------------------------------------------------
# GAE (in the style of SB3's tests/test_gae.py: the hand computation is written out)

# Two episodes: row 0 has 3 tokens, row 1 ends after 2 (its third column is padding,
# filled with garbage that must not leak).
REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, NAN]])  # (2, 3)
VALUES = torch.tensor([[0.2, 0.4, 0.6], [0.3, 0.1, INF]])  # (2, 3)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # (2, 3)


def test_gae_gamma_1_lambda_1_is_monte_carlo_return_minus_value():
    advantages, returns = compute_gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    # row 0: reward-to-go is 1 at every step; row 1: 0.5 - 1 = -0.5, then -1.
    close(returns, [[1.0, 1.0, 1.0], [-0.5, -1.0, 0.0]])
    close(advantages, [[1.0 - 0.2, 1.0 - 0.4, 1.0 - 0.6], [-0.5 - 0.3, -1.0 - 0.1, 0.0]])


def test_gae_gamma_09_lambda_08_by_hand():
    gamma, lam = 0.9, 0.8
    advantages, returns = compute_gae(REWARDS, VALUES, MASK, gamma=gamma, lam=lam)

    # row 0, terminal after t = 2 (next value 0)
    delta_02 = 1.0 + gamma * 0.0 - 0.6  # 0.4
    delta_01 = 0.0 + gamma * 0.6 - 0.4  # 0.14
    delta_00 = 0.0 + gamma * 0.4 - 0.2  # 0.16
    a_02 = delta_02  # 0.4
    a_01 = delta_01 + gamma * lam * a_02  # 0.428
    a_00 = delta_00 + gamma * lam * a_01  # 0.46816
    # row 1, terminal after t = 1: the padding's value (inf) is not bootstrapped
    delta_11 = -1.0 + gamma * 0.0 - 0.1  # -1.1
    delta_10 = 0.5 + gamma * 0.1 - 0.3  # 0.29
    a_11 = delta_11  # -1.1
    a_10 = delta_10 + gamma * lam * a_11  # -0.502

    close(advantages, [[0.46816, 0.428, 0.4], [-0.502, -1.1, 0.0]])
    close(advantages, [[a_00, a_01, a_02], [a_10, a_11, 0.0]])
    close(returns, [[a_00 + 0.2, a_01 + 0.4, a_02 + 0.6], [a_10 + 0.3, a_11 + 0.1, 0.0]])


def test_gae_lambda_0_is_one_step_td_error():
    advantages, _ = compute_gae(REWARDS, VALUES, MASK, gamma=0.5, lam=0.0)
    close(
        advantages,
        [
            [0.0 + 0.5 * 0.4 - 0.2, 0.0 + 0.5 * 0.6 - 0.4, 1.0 - 0.6],
            [0.5 + 0.5 * 0.1 - 0.3, -1.1, 0.0],
        ],
    )


# ----------------------------------------------------------------------------------
# KL penalty


def test_kl_estimators_on_known_numbers():
    logp = torch.tensor([-1.0, -2.0, -0.7])  # (3,)
    ref = torch.tensor([-1.5, -1.0, -0.7])  # (3,)
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0, 0.0])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.5, 0.0])
    # k3 with r = ref - logp = -0.5, 1.0, 0: (e^r - 1) - r
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])
    close(kl_penalty(logp, ref, "abs"), [0.5, 1.0, 0.0])
    close(kl_penalty(logp, ref), [0.5, -1.0, 0.0])  # k1 is the default


def test_k3_is_nonnegative_where_k1_is_not():
    gen = torch.Generator().manual_seed(2)
    logp = torch.randn(1000, generator=gen) * 3  # (1000,)
    ref = torch.randn(1000, generator=gen) * 3  # (1000,)
    assert (kl_penalty(logp, ref, "k1") < 0).any()
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k2") >= 0).all()


def test_k1_and_k3_means_over_policy_samples_estimate_the_kl():
    p_logits = torch.tensor([1.0, 0.0, -1.0, 0.5])  # (V,)
    q_logits = torch.tensor([0.0, 0.5, 0.0, -0.5])  # (V,)
    log_p = torch.log_softmax(p_logits, -1)  # (V,)
    log_q = torch.log_softmax(q_logits, -1)  # (V,)
    exact = (log_p.exp() * (log_p - log_q)).sum().item()  # KL(p || q) over the support
    assert exact > 0.1

    gen = torch.Generator().manual_seed(3)
    samples = torch.multinomial(log_p.exp(), 200_000, replacement=True, generator=gen)  # (N,)
    k1 = kl_penalty(log_p[samples], log_q[samples], "k1").mean().item()
    k3 = kl_penalty(log_p[samples], log_q[samples], "k3").mean().item()
    assert k1 == pytest.approx(exact, abs=0.01)
    assert k3 == pytest.approx(exact, abs=0.01)


def test_full_kl_sums_the_exact_kl_over_the_vocabulary_and_is_zero_at_the_reference():
    p_logits = torch.tensor([[[1.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 3.0]]])  # (1, 2, V)
    q_logits = torch.tensor([[[0.0, 0.5, 0.0, -0.5], [0.0, 0.0, 0.0, 3.0]]])  # (1, 2, V)
    log_q = torch.log_softmax(q_logits, -1)  # (1, 2, V)
    kl = full_kl(p_logits, log_q.to(torch.bfloat16))  # (1, 2)
    log_p = torch.log_softmax(p_logits[0, 0], -1)
    hand = sum(math.exp(a) * (a - b) for a, b in zip(log_p.tolist(), log_q[0, 0].tolist()))  # 0.33 nats
    assert kl.shape == (1, 2) and kl[0, 0].item() == pytest.approx(hand, abs=5e-3) and hand > 0.3
    assert kl[0, 1].item() == pytest.approx(0.0, abs=5e-3)  # the same distribution (bf16 rounding aside)


def test_unknown_kl_estimator_lists_the_known_ones():
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


# ----------------------------------------------------------------------------------
# KL controllers


@pytest.mark.parametrize(
    "current_kl, expected",
    [
        (12.0, 0.2 * (1 + 0.2 * 256 / 10_000)),  # 12/6 - 1 = 1, clipped to +0.2
        (6.6, 0.2 * (1 + 0.1 * 256 / 10_000)),  # 6.6/6 - 1 = 0.1, not clipped
        (6.0, 0.2),  # on target: unchanged
        (3.0, 0.2 * (1 - 0.2 * 256 / 10_000)),  # 3/6 - 1 = -0.5, clipped to -0.2
        (torch.tensor(6.6, dtype=torch.float64), 0.2 * (1 + 0.1 * 256 / 10_000)),  # 0-d tensor
    ],
)
def test_adaptive_kl_controller_moves_by_the_proportional_rule(current_kl, expected):
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    returned = ctl.update(current_kl, n_steps=256)
    assert ctl.value == pytest.approx(expected, rel=1e-12)
    assert returned == ctl.value


def test_adaptive_kl_controller_direction_and_state_round_trip():
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    for _ in range(5):
        ctl.update(10.0, n_steps=10)  # KL too high: the penalty grows
    assert ctl.value == pytest.approx(0.1 * 1.02**5)
    high = ctl.value
    ctl.update(0.0, n_steps=10)  # KL too low: the penalty shrinks
    assert ctl.value == pytest.approx(high * 0.98)

    resumed = AdaptiveKLController(0.1, target=1.0, horizon=100)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    resumed.update(10.0, 10), ctl.update(10.0, 10)
    assert resumed.value == ctl.value


def test_fixed_kl_controller_does_not_move():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, n_steps=1000) == 0.05
    assert ctl.value == 0.05
    other = FixedKLController(0.3)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


# ----------------------------------------------------------------------------------
# PPO losses


def test_policy_loss_clipping_by_hand():
    clip = 0.2
    ratios = [1.5, 1.5, 1.1, 0.5]  # the real tokens; a fifth is padding
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0, 0.0]])  # (1, 5)
    old = torch.full((1, 5), -1.0)  # (1, 5)
    new = old + torch.tensor([[math.log(r) for r in ratios] + [200.0]])  # (1, 5) exp(200) = inf
    new.requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # (1, 5)

    pg_loss, stats = policy_loss(new, old, advantages, mask, clip)

    # token 0: A = +1, ratio 1.5 -> max(-1.5, -1.2) = -1.2 (clip binds: no gain beyond 1.2)
    # token 1: A = -1, ratio 1.5 -> max(1.5, 1.2) = 1.5 (pessimistic: unclipped)
    # token 2: A = +2, ratio 1.1 -> inside the range: -2.2
    # token 3: A = -1, ratio 0.5 -> max(0.5, 0.8) = 0.8 (clip binds)
    close(pg_loss, (-1.2 + 1.5 - 2.2 + 0.8) / 4)
    close(stats["clipfrac"], 3 / 4)
    close(stats["ratio_mean"], (1.5 + 1.5 + 1.1 + 0.5) / 4)
    close(stats["ratio_max"], 1.5)
    approx_kl = sum((r - 1) - math.log(r) for r in ratios) / 4
    close(stats["approx_kl"], approx_kl)
    assert not stats["approx_kl"].requires_grad

    pg_loss.backward()
    # d/dlogp of -A * ratio is -A * ratio; the clipped tokens and the padding get none
    close(new.grad, [[0.0, 1.0 * 1.5 / 4, -2.0 * 1.1 / 4, 0.0, 0.0]])


def test_policy_loss_of_an_unchanged_policy_is_minus_mean_advantage():
    logp = torch.tensor([[-0.3, -2.0, -1.0]])  # (1, 3)
    advantages = torch.tensor([[0.5, -1.5, 4.0]])  # (1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # (1, 3)
    pg_loss, stats = policy_loss(logp, logp, advantages, mask, clip_range=0.2)
    close(pg_loss, -(0.5 - 1.5) / 2)
    close(stats["approx_kl"], 0.0)
    close(stats["clipfrac"], 0.0)
    close(stats["ratio_mean"], 1.0)


def test_value_loss_clipping_binds():
    # old 0, new 0.5, return 1.0: unclipped (0.5 - 1)^2 = 0.25; the clipped value is
    # 0 + 0.2 = 0.2, (0.2 - 1)^2 = 0.64 is larger, so the loss is the clipped one.
    new = torch.tensor([[0.5]], requires_grad=True)  # (1, 1)
    v_loss, stats = value_loss(
        new,
        torch.tensor([[0.0]]),
        torch.tensor([[1.0]]),
        torch.tensor([[1.0]]),
        clip_range_value=0.2,
    )
    close(v_loss, 0.5 * 0.64)
    close(stats["vf_clipfrac"], 1.0)
    v_loss.backward()
    close(new.grad, [[0.0]])  # the clipped branch does not depend on the new value


def test_value_loss_clipping_does_not_bind():
    # inside the range: old 0, new 0.1, return 1: both errors are 0.81
    new = torch.tensor([[0.1]], requires_grad=True)  # (1, 1)
    v_loss, stats = value_loss(
        new,
        torch.tensor([[0.0]]),
        torch.tensor([[1.0]]),
        torch.tensor([[1.0]]),
        clip_range_value=0.2,
    )
    close(v_loss, 0.5 * 0.81)
    close(stats["vf_clipfrac"], 0.0)
    v_loss.backward()
    close(new.grad, [[0.5 * 2 * (0.1 - 1.0)]])
    # outside the range, but moving towards the target overshot: old 0, new 1.0,
    # return 0.5: unclipped 0.25 > clipped (0.2 - 0.5)^2 = 0.09, so no clipping.
    v_loss, stats = value_loss(
        torch.tensor([[1.0]]),
        torch.tensor([[0.0]]),
        torch.tensor([[0.5]]),
        torch.tensor([[1.0]]),
        0.2,
    )
    close(v_loss, 0.5 * 0.25)
    close(stats["vf_clipfrac"], 0.0)


def test_value_loss_masks_and_can_turn_clipping_off():
    new = torch.tensor([[0.5, 0.1, 1.0, 50.0]])  # (1, 4) the last is padding
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # (1, 4)
    returns = torch.tensor([[1.0, 1.0, 0.5, 0.0]])  # (1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # (1, 4)
    v_loss, stats = value_loss(new, old, returns, mask, 0.2)
    close(v_loss, 0.5 * (0.64 + 0.81 + 0.25) / 3)
    close(stats["vf_clipfrac"], 1 / 3)
    v_loss, stats = value_loss(new, old, returns, mask, None)
    close(v_loss, 0.5 * (0.25 + 0.81 + 0.25) / 3)
    close(stats["vf_clipfrac"], 0.0)


# ----------------------------------------------------------------------------------
# Group advantages


def test_group_advantages_rloo_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 4.0])  # (6,) two prompts, k = 3
    close(
        group_advantages(rewards, group_size=3, method="rloo"),
        [
            1 - (2 + 3) / 2,
            2 - (1 + 3) / 2,
            3 - (1 + 2) / 2,
            10 - (10 + 4) / 2,
            10 - (10 + 4) / 2,
            4 - (10 + 10) / 2,
        ],
    )


def test_group_advantages_grpo_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 4.0])  # (6,)
    # group 0: mean 2, unbiased std 1; group 1: mean 8, deviations 2, 2, -4,
    # unbiased variance (4 + 4 + 16) / 2 = 12
    s = math.sqrt(12)
    close(group_advantages(rewards, 3, "grpo", eps=0.0), [-1.0, 0.0, 1.0, 2 / s, 2 / s, -4 / s])
    # groups of two are a different grouping: (1, 2), (3, 10), (10, 4)
    close(group_advantages(rewards, 2, "rloo"), [-1.0, 1.0, -7.0, 7.0, 6.0, -6.0])


def test_group_advantages_of_equal_rewards_are_zero_not_nan():
    rewards = torch.tensor([0.7, 0.7, 0.7, 0.7])  # (4,)
    assert torch.equal(group_advantages(rewards, 4, "grpo"), torch.zeros(4))
    assert torch.equal(group_advantages(rewards, 2, "rloo"), torch.zeros(4))


@pytest.mark.parametrize(
    "rewards, group_size, method, message",
    [
        (torch.zeros(5), 3, "rloo", "not a multiple"),
        (torch.zeros(4), 1, "rloo", "at least 2"),
        (torch.zeros(4), 2, "ppo", "rloo, grpo"),
        (torch.zeros(2, 2), 2, "grpo", "1-D"),
    ],
)
def test_group_advantages_errors(rewards, group_size, method, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size, method)


def test_logprobs_and_entropy_equal_the_two_separate_helpers():
    from textenv.agents.ppo_math import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits

    logits = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0), requires_grad=True)
    tokens = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(1))
    logprobs, entropy = logprobs_and_entropy(logits, tokens)
    torch.testing.assert_close(logprobs, logprobs_from_logits(logits, tokens))
    torch.testing.assert_close(entropy, entropy_from_logits(logits).detach())
    assert logprobs.requires_grad and not entropy.requires_grad
