"""The pure tensor math of token-level PPO for language models.

Everything here is a short function of torch tensors, with no model, optimizer or
state beyond the KL controllers: the PPO agent composes them, and the tests check
each one against numbers computed by hand. The update follows cleanrl's ``ppo.py``
and the classic value-head PPO of Ziegler et al. (2019), "Fine-Tuning Language
Models from Human Preferences", as TRL implemented it.

Shapes: B = batch (episodes), T = completion tokens, V = vocabulary. ``mask`` is a
(B, T) float tensor, 1.0 for the tokens the policy generated and 0.0 after the
episode ended (a prefix mask: each row is ones, then zeros). Entries past the end
hold whatever the padded forward pass produced; every function here ignores them,
even when they are NaN or inf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
GROUP_ADVANTAGE_METHODS = ("rloo", "grpo")


# ----------------------------------------------------------------------------------
# Masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is nonzero.

    Args:
        x: values, any shape.
        mask: the same shape as ``x``; 1.0 where an entry counts, 0.0 where not.
        dim: reduce along this dimension only; None reduces over all entries.

    Returns:
        A scalar, or ``x`` reduced along ``dim``. A reduction with no entry in the
        mask gives 0 (not NaN), so an empty minibatch adds nothing to a loss.
    """
    x = torch.where(mask.bool(), x, 0.0)  # (B, T) masked-out entries may hold NaN/inf
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)  # () or (B,)
    count = mask.sum() if dim is None else mask.sum(dim)  # () or (B,)
    return total / count.clamp(min=1e-8)  # () or (B,)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the entries where ``mask`` is nonzero.

    Args:
        x: values, any shape.
        mask: the same shape as ``x``; 1.0 where an entry counts.
        unbiased: apply Bessel's correction n / (n - 1), as ``torch.var`` does.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: the mask selects no entry, or only one when ``unbiased``.
    """
    mean = masked_mean(x, mask)  # ()
    var = masked_mean((x - mean) ** 2, mask)  # ()
    if unbiased:
        n = mask.sum()  # ()
        # One host sync per call: the callers whiten once per batch, not per token.
        if n.item() < 2:
            raise ValueError(
                f"masked_var(unbiased=True) needs at least 2 masked entries, got {n.item():g}"
            )
        var = var * n / (n - 1)  # ()
    elif mask.sum().item() == 0:
        raise ValueError("masked_var: the mask selects no entry")
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
    total: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalize ``x`` to zero mean and unit variance over the masked entries.

    Args:
        x: values, any shape, e.g. (B, T) advantages.
        mask: the same shape as ``x``; 1.0 where an entry counts.
        shift_mean: if False, keep the original mean and only rescale (used for
            rewards, whose sign carries meaning).
        total: sums a tensor over the processes of a run, so that the mean and variance are
            those of every process's entries (None: this process's only).

    Returns:
        A tensor of ``x``'s shape; the masked entries have mean 0 (or ``x``'s mean,
        if not ``shift_mean``) and unbiased variance 1; the masked-out entries are 0.
    """
    if total is None:
        mean = masked_mean(x, mask)  # ()
        var = masked_var(x, mask)  # ()
    else:
        mask_sum, x_sum = total(torch.stack([mask.sum(), (x * mask).sum()]))  # () each
        mean = x_sum / mask_sum  # ()
        var = total(((x - mean) ** 2 * mask).sum()) / (mask_sum - 1)  # () unbiased, as masked_var's
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean  # (B, T)
    return torch.where(mask.bool(), whitened, 0.0)  # (B, T)


# ----------------------------------------------------------------------------------
# Log-probabilities and entropy from logits


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token under the logits that produced it.

    The logits are upcast to float32 first: in bf16 the log-softmax is off by about
    1e-2, enough to make the PPO ratio of an unchanged policy noticeably differ from 1.

    Args:
        logits: (B, T, V) the logits whose softmax gave token t (already shifted:
            ``logits[:, t]`` predicts ``tokens[:, t]``).
        tokens: (B, T) int64 token ids.

    Returns:
        (B, T) float32 log-probabilities.
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position.

    Args:
        logits: (B, T, V) logits.

    Returns:
        (B, T) float32 entropies in nats: logsumexp(z) - sum(softmax(z) * z).
    """
    logits = logits.float()  # (B, T, V)
    probs = F.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # (B, T)


def logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = True, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`logprobs_from_logits` and :func:`entropy_from_logits` from one log-softmax.

    The update's hot path: over a 49k vocabulary each full pass over (B, T, V) counts.

    Args:
        logits: (B, T, V) logits, ``logits[:, t]`` predicting ``tokens[:, t]``.
        tokens: (B, T) int64 token ids.
        with_entropy: also compute the entropies (None otherwise).
        entropy_grad: the entropies carry gradients (for an entropy bonus); else detached.

    Returns:
        logprobs (B, T) with gradients, and entropies (B, T).
    """
    logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # (B, T, V): upcast inside the kernel
    logprobs = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    if not with_entropy:
        return logprobs, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp.exp() * logp).sum(-1)  # (B, T)
    return logprobs, entropy


# ----------------------------------------------------------------------------------
# Advantages


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over token sequences.

    Every episode ends at its last masked token and that end is terminal: the value
    after it is 0. This holds for truncated completions too, as in Ziegler et al.,
    since the reward model scores the completion as it stands.

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
    A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}

    Args:
        rewards: (B, T) per-token rewards (e.g. -kl_coef * KL, plus the score at the
            last token).
        values: (B, T) the value head's estimates V(s_t).
        mask: (B, T) 1.0 for real tokens, 0.0 after the episode ended.
        gamma: discount factor.
        lam: the GAE lambda.

    Returns:
        advantages: (B, T), 0 past the end of each episode.
        returns: (B, T) advantages + values, the value head's targets; 0 past the end.
    """
    valid = mask.bool()  # (B, T)
    rewards = torch.where(valid, rewards, 0.0)  # (B, T)
    values = torch.where(valid, values, 0.0)  # (B, T)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = rewards.new_zeros(B)  # (B,) V_{t+1} * m_{t+1}; 0 after the last token
    next_advantage = rewards.new_zeros(B)  # (B,) A_{t+1} * m_{t+1}
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]  # (B,)
        advantages[:, t] = advantage  # (B,) into column t
        # Past the end both are 0, so the last real token sees a terminal next state.
        next_value = values[:, t] * mask[:, t]  # (B,)
        next_advantage = advantage  # (B,)
    returns = (advantages + values) * mask  # (B, T)
    return advantages, returns


def group_advantages(
    rewards: torch.Tensor, group_size: int, method: str = "rloo", eps: float = 1e-4
) -> torch.Tensor:
    """Critic-free advantages from a baseline over samples of the same prompt.

    Rows are grouped consecutively: rows [0, k) answer one prompt, [k, 2k) the next.

    * ``"rloo"`` (REINFORCE leave-one-out, Ahmadian et al. 2024):
      A_i = r_i - mean of the other k - 1 rewards in the group.
    * ``"grpo"`` (Shao et al. 2024): A_i = (r_i - group mean) / (group std + eps),
      with the unbiased std.

    Args:
        rewards: (B,) one scalar reward per sample.
        group_size: k, the samples per prompt; at least 2.
        method: ``"rloo"`` or ``"grpo"``.
        eps: added to the group std for ``"grpo"`` (a group of equal rewards gives 0).

    Returns:
        (B,) advantages, in the order of ``rewards``.

    Raises:
        ValueError: ``rewards`` is not 1-D, ``group_size`` < 2, B is not a multiple of
            ``group_size``, or ``method`` is unknown.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 for a group baseline, got {group_size}")
    if rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size {rewards.shape[0]} is not a multiple of group_size {group_size}"
        )
    grouped = rewards.reshape(-1, group_size)  # (B // k, k)
    if method == "rloo":
        others_mean = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)  # (B // k, k)
        advantages = grouped - others_mean  # (B // k, k)
    elif method == "grpo":
        mean = grouped.mean(1, keepdim=True)  # (B // k, 1)
        std = grouped.std(1, keepdim=True)  # (B // k, 1) unbiased
        advantages = (grouped - mean) / (std + eps)  # (B // k, k)
    else:
        raise ValueError(
            f"unknown group advantage method {method!r}; "
            f"choose one of {', '.join(GROUP_ADVANTAGE_METHODS)}"
        )
    return advantages.reshape(-1)  # (B,)


# ----------------------------------------------------------------------------------
# KL penalty and its controllers


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) at the sampled tokens.

    With tokens sampled from the policy and log_ratio = ref - logp (Schulman,
    "Approximating KL divergence", 2020):

    * ``"k1"``: logp - ref. Unbiased, but single samples can be negative.
    * ``"k2"``: 0.5 * (logp - ref)^2. Biased, always >= 0, low variance.
    * ``"k3"``: (exp(log_ratio) - 1) - log_ratio. Unbiased and always >= 0.
    * ``"abs"``: |logp - ref|.

    As values (a reward) k1 and k3 are unbiased for KL(policy || reference). As losses, what
    acts is the expected gradient through ``logprobs``: k2's is exactly the gradient of
    KL(policy || reference), k3's that of the reverse KL(reference || policy), k1's is zero.

    Args:
        logprobs: (B, T) log-probabilities of the sampled tokens under the policy.
        ref_logprobs: (B, T) the same under the reference model.
        estimator: one of ``KL_ESTIMATORS``.

    Returns:
        (B, T) the per-token estimates (masked-out entries are not zeroed here).

    Raises:
        ValueError: an unknown estimator.
    """
    logratio = logprobs - ref_logprobs  # (B, T) log p(x) / q(x)
    if estimator == "k1":
        return logratio  # (B, T)
    if estimator == "k2":
        return 0.5 * logratio**2  # (B, T)
    if estimator == "k3":
        return torch.expm1(-logratio) + logratio  # (B, T) (q/p - 1) - log(q/p)
    if estimator == "abs":
        return logratio.abs()  # (B, T)
    raise ValueError(
        f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}"
    )


def full_kl(logits: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Exact per-position KL(policy || reference), summed over the whole vocabulary.

    Unlike the sampled estimators it needs no sample and has no variance: its gradient
    pulls every token's probability, sampled or not, towards the reference's.

    Args:
        logits: (B, T, V) the policy's logits.
        ref_logp: (B, T, V) the reference's log-probabilities (any float dtype).

    Returns:
        (B, T) float32 KL in nats at each position.
    """
    logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # (B, T, V)
    return (logp.exp() * (logp - ref_logp.float())).sum(-1)  # (B, T)


class AdaptiveKLController:
    """The proportional KL controller of Ziegler et al. (2019), section 2.2.

    It moves the KL coefficient beta so the observed KL tracks a target:
    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon).

    Attributes:
        value: the current KL coefficient beta.
        target: the KL (nats per episode) to steer towards.
        horizon: how many samples it takes for a full-size (20%) correction.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        """Start at ``init_kl_coef``; ``target`` and ``horizon`` must be positive."""
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Adjust the coefficient after a batch.

        Args:
            current_kl: the batch's mean KL per episode (a float or a 0-d tensor).
            n_steps: samples (episodes) in the batch.

        Returns:
            The new coefficient.
        """
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        """The state to checkpoint: the coefficient (target and horizon are config)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the coefficient from ``state_dict()``'s output."""
        self.value = float(state["value"])


class FixedKLController:
    """A constant KL coefficient with ``AdaptiveKLController``'s interface.

    Attributes:
        value: the KL coefficient beta.
    """

    def __init__(self, kl_coef: float) -> None:
        """Hold ``kl_coef`` for the whole run."""
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Leave the coefficient unchanged (the arguments are ignored); return it."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        """The state to checkpoint."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the coefficient from ``state_dict()``'s output."""
        self.value = float(state["value"])


# ----------------------------------------------------------------------------------
# PPO losses


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate objective, as a loss to minimize, per token.

    Args:
        new_logprobs: (B, T) log-probabilities under the policy being updated.
        old_logprobs: (B, T) the same under the policy that sampled the batch.
        advantages: (B, T) advantage estimates (usually whitened).
        mask: (B, T) 1.0 for real tokens.
        clip_range: epsilon; the ratio is clipped to [1 - eps, 1 + eps].

    Returns:
        pg_loss: scalar, the masked mean of max(-A * ratio, -A * clip(ratio)).
        stats: detached scalars: ``approx_kl`` (masked mean of (ratio - 1) - log ratio,
            Schulman's k3 estimator of KL(old || new)), ``clipfrac`` (fraction of
            tokens with |ratio - 1| > eps), ``ratio_mean``, ``ratio_max``.
    """
    valid = mask.bool()  # (B, T)
    # Zero the log-ratio past the end before exp: there the logprobs come from padding,
    # and an overflowing exp would turn into NaN gradients even though it is masked out.
    logratio = torch.where(valid, new_logprobs - old_logprobs, 0.0)  # (B, T)
    ratio = logratio.exp()  # (B, T)
    pg_loss1 = -advantages * ratio  # (B, T)
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)  # ()

    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - logratio, mask)  # ()
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_range).float(), mask)  # ()
        ratio_mean = masked_mean(ratio, mask)  # ()
        ratio_max = torch.where(valid, ratio, float("-inf")).max()  # ()
    stats = {
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
        "ratio_mean": ratio_mean,
        "ratio_max": ratio_max,
    }
    return pg_loss, stats


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The value head's loss, with PPO's pessimistic clipping around the old values.

    Args:
        new_values: (B, T) the value head's current estimates.
        old_values: (B, T) its estimates when the batch was sampled.
        returns: (B, T) the targets (GAE returns).
        mask: (B, T) 1.0 for real tokens.
        clip_range_value: how far a new value may move from the old one before its
            error stops shrinking the loss; None turns clipping off.

    Returns:
        v_loss: scalar, 0.5 * masked mean of max(unclipped^2, clipped^2).
        stats: detached scalars: ``vf_clipfrac``, the fraction of tokens where the
            clipped error is the larger one (so the clip binds).
    """
    v_loss_unclipped = (new_values - returns) ** 2  # (B, T)
    if clip_range_value is None:
        v_loss_max = v_loss_unclipped  # (B, T)
        binds = torch.zeros_like(v_loss_unclipped)  # (B, T)
    else:
        v_clipped = old_values + torch.clamp(
            new_values - old_values, -clip_range_value, clip_range_value
        )  # (B, T)
        v_loss_clipped = (v_clipped - returns) ** 2  # (B, T)
        v_loss_max = torch.max(v_loss_unclipped, v_loss_clipped)  # (B, T)
        binds = (v_loss_clipped > v_loss_unclipped).float()  # (B, T)
    v_loss = 0.5 * masked_mean(v_loss_max, mask)  # ()
    with torch.no_grad():
        vf_clipfrac = masked_mean(binds, mask)  # ()
    return v_loss, {"vf_clipfrac": vf_clipfrac}


def weighted_sum(stats: Sequence[dict[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """Each key's sum of value x weight over ``stats`` (the maximum for ``*_max`` keys); every dict has the keys."""
    return {
        key: max(s[key] for s in stats) if key.endswith("_max") else sum(s[key] * w for s, w in zip(stats, weights))
        for key in stats[0]
    }


def weighted_mean(stats: Sequence[dict[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """Weighted means of each key of ``stats`` (maxima for ``*_max`` keys); a key missing from some dicts
    (the entropy, logged in the first epoch only) is averaged over the dicts that have it."""
    keys = dict.fromkeys(k for s in stats for k in s)
    out = {}
    for key in keys:
        pairs = [(s[key], w) for s, w in zip(stats, weights) if key in s]
        if key.endswith("_max"):
            out[key] = max(v for v, _ in pairs)
        else:
            out[key] = sum(v * w for v, w in pairs) / max(sum(w for _, w in pairs), 1e-12)
    return out


def without_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row.

    The task pads every prompt to its longest one; a batch of shorter prompts need not
    run those columns. Positions come from the mask's cumsum, so nothing else moves.

    Args:
        input_ids: (b, L) left-padded prompts, then completions.
        attention_mask: (b, L).

    Returns:
        The same two, (b, L') with L' <= L.
    """
    first = int(attention_mask.any(0).int().argmax())  # the first column holding a real token
    return input_ids[:, first:], attention_mask[:, first:]
