"""The PPO agent's options, with the classic value-head PPO defaults (Ziegler et al.; TRL 0.11)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, kw_only=True)
class PPOConfig:
    """Every option of :class:`textenv.agents.PPO`; ``PPO(env, **options)`` fills this in."""

    # --- batch sizes
    batch_size: int = 16
    """Episodes sampled per iteration (rows of the rollout env)."""
    mini_batch_size: int = 8
    """Episodes per optimizer step."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per mini-batch: each holds ``mini_batch_size / gradient_accumulation_steps`` episodes."""
    ppo_epochs: int = 4
    """Passes over the batch per iteration."""

    # --- optimization
    learning_rate: float = 1.41e-5
    """Adam's learning rate."""
    value_learning_rate: float | None = None
    """Learning rate of the value head (and of a separate value model); None: ``learning_rate``."""
    lr_decay_episodes: int | None = None
    """Anneal both learning rates linearly, from their values at episode 0 to 0 at this many episodes of
    the run (as SB3's linear schedule over ``total_timesteps``); None keeps them constant. Set at the
    start of each iteration from the run's episode count, so a resumed run continues the same line."""
    adam_eps: float = 1e-8
    """Adam's epsilon."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""

    # --- PPO objective
    gamma: float = 1.0
    """Discount per token."""
    lam: float = 0.95
    """GAE's lambda."""
    cliprange: float = 0.2
    """Clip range of the policy ratio."""
    cliprange_value: float | None = 0.2
    """Clip range of the value prediction around the rollout's value (None: no value clipping)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    ent_coef: float = 0.0
    """Weight of an entropy bonus in the loss (SB3's ``ent_coef``): keeps the policy from sharpening where
    the reward does not ask it to."""
    whiten_advantages: bool = True
    """Normalize advantages to zero mean, unit variance over the batch's tokens."""
    ratio_threshold: float = 10.0
    """Skip a mini-batch whose mean policy ratio exceeds this (a guard against blow-ups)."""
    target_kl: float | None = None
    """Stop an iteration's epochs early once the mean approximate KL to the rollout policy exceeds 1.5x this."""

    # --- KL penalty to the reference
    init_kl_coef: float = 0.2
    """Initial weight of the per-token KL penalty in the reward."""
    adaptive_kl: bool = True
    """Adapt the KL weight towards ``kl_target`` (Ziegler's proportional controller)."""
    kl_target: float = 6.0
    """Target KL (nats per episode) of the adaptive controller."""
    kl_horizon: int = 10_000
    """Horizon (episodes) of the adaptive controller."""
    kl_estimator: Literal["k1", "k2", "k3", "full"] | None = None
    """Per-token KL estimator: k1 = log p - log q; k2 = (log p - log q)^2 / 2; k3 = (r - 1) - log r, r = q/p;
    full = the exact KL summed over the vocabulary (in the loss only: it keeps the reference's whole
    distribution, B x T x V in bf16, for the update; as a per-token reward it would not depend on the
    sampled token, and a run with it ran away to 20 nats). None: k1 in the reward, k3 in the loss."""
    kl_in_loss: bool = False
    """Put the KL penalty in the loss (the masked token mean of the estimator, times the KL weight, as in
    GRPO) instead of in the reward. In the loss each token is pulled back towards the reference by its own
    term, where in the reward a critic-free advantage spreads the sequence's KL over all its tokens."""

    # --- rewards
    reward_norm: bool = False
    """Normalize episode scores with running mean/std statistics."""
    reward_clip: float | None = None
    """Clip episode scores (after normalization) to [-x, x]."""

    # --- advantages
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    """``gae`` (value head); or critic-free group baselines: ``rloo`` (leave-one-out) or ``grpo`` (group z-score)."""
    group_size: int = 4
    """Samples per prompt for ``rloo``/``grpo`` (divides ``batch_size``)."""
    value_model: Literal["shared", "separate"] = "shared"
    """``shared``: the value head sits on the policy's trunk; ``separate``: its own copy of the model."""

    # --- sampling
    temperature: float = 1.0
    """Sampling temperature of the rollout."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: all)."""

    # --- hardware, logging and checkpoints
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 autocast where the hardware has fast bf16 (CUDA, CPUs with AVX512-BF16/AMX);
    fp32 master weights."""
    keep_cpu_memory: bool = True
    """On a CPU under glibc, keep freed memory in the process for reuse (see
    :func:`textenv.agents.policy.keep_freed_cpu_memory`): about 20 % faster steps, at the price of holding
    the peak memory until the process exits. Process-wide."""
    seed: int = 0
    """Seeds prompt draws, sampling and the mini-batch order."""
    run_dir: str | None = None
    """Where TensorBoard events, samples, checkpoints and the reward curve go (None: nothing written)."""
    checkpoint_every: int = 10
    """Save a full checkpoint every this many iterations (0: only at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """Periodic checkpoints kept (the oldest are deleted)."""
    sample_every: int = 5
    """Log sample completions every this many iterations (0: never)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of mini_batch_size {self.mini_batch_size}"
            )
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"mini_batch_size {self.mini_batch_size} is not a multiple of "
                f"gradient_accumulation_steps {self.gradient_accumulation_steps}"
            )
        if self.advantage != "gae" and (self.group_size < 2 or self.batch_size % self.group_size):
            raise ValueError(f"{self.advantage} needs group_size >= 2 dividing batch_size {self.batch_size}")
        if self.kl_in_loss and self.kl_estimator == "k1":
            raise ValueError(
                "kl_in_loss needs kl_estimator k2 or k3 (or None: k3): k1's gradient at sampled tokens is zero in "
                "expectation"
            )
        if self.kl_estimator == "full" and not self.kl_in_loss:
            raise ValueError(
                "kl_estimator 'full' needs kl_in_loss=True: as a reward, the exact KL at a position does not depend "
                "on the token sampled there, so the policy gradient loses the KL's pull on that token's choice"
            )
        if self.lr_decay_episodes is not None and self.lr_decay_episodes <= 0:
            raise ValueError(f"lr_decay_episodes must be positive (or None), got {self.lr_decay_episodes}")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be positive, got {self.temperature}: rollouts must sample (0 would be greedy); "
                "evaluate(prompts, temperature=0) decodes greedily"
            )
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={self.top_k}, top_p={self.top_p}")
        if self.advantage not in ("gae", "rloo", "grpo"):
            raise ValueError(f"advantage must be gae, rloo or grpo, got {self.advantage!r}")

    @property
    def micro_batch_size(self) -> int:
        """Episodes per forward/backward pass."""
        return self.mini_batch_size // self.gradient_accumulation_steps

    @property
    def uses_reference(self) -> bool:
        """Whether there is a KL term at all (else no reference model is kept or run)."""
        return self.adaptive_kl or self.init_kl_coef > 0

    @property
    def kl_estimator_used(self) -> str:
        """The estimator in effect: ``kl_estimator``, or k1 in the reward and k3 in the loss."""
        return self.kl_estimator or ("k3" if self.kl_in_loss else "k1")

    @property
    def uses_value_head(self) -> bool:
        """Whether a value function is trained (GAE) or the advantages are critic-free."""
        return self.advantage == "gae"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PPOConfig:
        """Build from keyword options, naming any unknown one."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown PPO option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)
