"""The PPO agent's options. Their defaults are the setting tuned on the main task (docs/BENCHMARKS.md, learning
curve (bb)), the same for ``PPO(env)`` and ``textenv train``."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass(frozen=True, kw_only=True)
class PPOConfig:
    """Every option of :class:`textenv.agents.PPO`; ``PPO(env, **options)`` fills this in.

    Each option is checked when the config is built: a wrong value raises ``ValueError`` naming it.
    """

    # --- batch sizes
    batch_size: int = 64
    """Episodes sampled per iteration (rows of the rollout env)."""
    mini_batch_size: int = 16
    """Episodes per optimizer step."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per mini-batch: each holds ``mini_batch_size / gradient_accumulation_steps`` episodes."""
    ppo_epochs: int = 2
    """Passes over the batch per iteration."""

    # --- optimization
    learning_rate: float = 5e-5
    """Adam's learning rate (at the start, with ``lr_schedule="linear"``); 0 freezes the policy."""
    value_learning_rate: float | None = None
    """Learning rate of the value head (and of a separate value model); None: ``learning_rate``; 0 freezes it."""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """``linear``: anneal both learning rates linearly to 0 over the current ``learn(total_episodes)`` call, as
    SB3's linear schedule over ``total_timesteps``. Each iteration runs at the configured rates times
    ``max(0, 1 - num_episodes / end)``, where ``num_episodes`` counts the run's episodes before that iteration and
    ``end`` is the run's episode count at which the call stops: ``num_episodes`` at the call plus
    ``total_episodes``, or ``total_episodes`` itself with ``reset_num_episodes=False``. So a fresh agent's
    ``learn`` goes from the full rates down to ``1/iterations`` of them in its last iteration; a resumed run
    (``reset_num_episodes=False``, the same total) continues the same line; a later ``learn`` call on the same
    agent continues from where the line stands towards its new end (SB3's ``reset_num_timesteps=False``).
    ``train_iteration`` outside ``learn`` has no end and keeps the rates. ``constant``: the rates never move.
    ``lr_decay_episodes``, when set, is the end instead, under either value."""
    lr_decay_episodes: int | None = None
    """An explicit end of the linear schedule, in episodes of the run (counted from its first iteration, so a
    resumed run continues the same line); it overrides ``lr_schedule``. None: ``lr_schedule`` decides."""
    adam_eps: float = 1e-8
    """Adam's epsilon."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""

    # --- PPO objective
    gamma: float = 1.0
    """Discount per token."""
    lam: float = 0.8
    """GAE's lambda."""
    cliprange: float = 0.2
    """Clip range of the policy ratio."""
    cliprange_value: float | None = 0.2
    """Clip range of the value prediction around the rollout's value (None: no value clipping)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    ent_coef: float = 0.0
    """Weight of an entropy bonus in the loss (SB3's ``ent_coef``): keeps the policy from sharpening where
    the reward does not ask it to."""
    whiten_advantages: bool = True
    """GAE: normalize advantages to zero mean, unit variance over the batch's tokens. ``rloo``/``grpo``: divide
    the sequences' advantages by their standard deviation over the batch, without a shift, so each keeps its
    sign and an all-equal group its zero (each group's advantages already sum to 0)."""
    ratio_threshold: float = 10.0
    """Skip a mini-batch whose mean policy ratio exceeds this (a guard against blow-ups; inf: no guard)."""
    target_kl: float | None = None
    """Stop an iteration's epochs early once the mean approximate KL to the rollout policy exceeds 1.5x this."""

    # --- KL penalty to the reference
    init_kl_coef: float = 0.085
    """Initial weight of the per-token KL penalty."""
    adaptive_kl: bool = True
    """Adapt the KL weight towards ``kl_target`` (Ziegler's proportional controller)."""
    kl_target: float = 6.0
    """Target KL (nats per episode) of the adaptive controller."""
    kl_horizon: int = 10_000
    """Horizon (episodes) of the adaptive controller."""
    kl_estimator: Literal["k1", "k2", "k3", "full"] | None = None
    """Per-token estimator of KL(policy || reference), with p the policy's and q the reference's probability of
    the sampled token and r = q/p: k1 = log p - log q; k2 = (log p - log q)^2 / 2; k3 = (r - 1) - log r;
    full = the exact KL summed over the vocabulary (in the loss only: it keeps the reference's whole
    distribution, B x T x V in fp32, for the update; as a per-token reward it would not depend on the sampled
    token, and a run with it ran away to 20 nats). In the reward each is a value; in the loss (``kl_in_loss``)
    its gradient is what acts: see there. None: k1 in the reward, k2 in the loss."""
    kl_in_loss: bool = False
    """Put the KL penalty in the loss (the masked token mean of the estimator, times the KL weight, as in GRPO)
    instead of in the reward. There the estimator's expected gradient is what pulls the policy back: k2's is
    exactly the gradient of KL(policy || reference), the KL the controller measures (hence the default); k3's
    (GRPO's choice) is the gradient of the reverse KL(reference || policy), which pulls towards covering the
    reference's tokens instead; k1's is zero (refused). In the loss each token is pulled back by its own term,
    where in the reward a critic-free advantage spreads the sequence's KL over all its tokens."""

    # --- rewards
    reward_norm: bool = False
    """Normalize episode scores with running mean/std statistics."""
    reward_clip: float | None = None
    """Clip episode scores (after normalization) to [-x, x]."""

    # --- advantages
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    """``gae`` (value head); or critic-free group baselines: ``rloo`` (leave-one-out) or ``grpo`` (group z-score)."""
    group_size: int = 8
    """Samples per prompt for ``rloo``/``grpo`` (divides ``batch_size``)."""
    value_model: Literal["shared", "separate"] = "shared"
    """``shared``: the value head sits on the policy's trunk; ``separate``: its own copy of the model."""

    # --- sampling
    temperature: float = 1.0
    """Sampling temperature of the rollout."""
    top_k: int = 0
    """Must stay 0 in training (see ``top_p``); ``evaluate()``/``generate()`` take their own."""
    top_p: float = 1.0
    """Must stay 1.0 in training: top-k/top-p truncate the rollout's sampling distribution while PPO's ratio and
    KL use the full one. ``evaluate()``/``generate()`` take their own."""

    # --- LoRA
    lora_rank: int = 0
    """Rank of LoRA adapters (``peft``; ``pip install 'textenv[lora]'``): only the adapters and the value head
    train, and the KL reference is the same model with its adapters disabled, so the base weights are held once;
    checkpoints hold the adapters. 0: full fine-tuning."""
    lora_alpha: float = 16.0
    """LoRA's scale: the adapters' update is multiplied by ``lora_alpha / lora_rank``."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input in the update's forwards (the rollout and the old and reference log-probs
    run without it, so with dropout an unchanged policy's ratio is no longer exactly 1)."""
    lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    """Comma-separated names of the Linear layers that get adapters (the default: every projection of a
    Llama-style model), or ``all-linear``."""

    # --- hardware, logging and checkpoints
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 autocast where the hardware has fast bf16 (CUDA, CPUs with AVX512-BF16/AMX);
    fp32 master weights."""
    keep_cpu_memory: bool = True
    """On a CPU under glibc, keep freed memory in the process for reuse (see
    :func:`textenv.devices.keep_freed_cpu_memory`): about 20 % faster steps, at the price of holding
    the peak memory until the process exits. Process-wide."""
    seed: int = 0
    """Seeds prompt draws, sampling and the mini-batch order."""
    run_dir: str | None = None
    """Where TensorBoard events, samples, checkpoints and the reward curve go (None: nothing written). The agent
    locks it while it lives (one writer at a time); a new run refuses one that holds another run's checkpoints."""
    overwrite: bool = False
    """Start a new run in a ``run_dir`` that holds another run's checkpoints: that run's checkpoints, events,
    samples and reward curve are deleted first (other files stay)."""
    checkpoint_every: int = 10
    """Save a full checkpoint every this many iterations (0: only at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """Periodic checkpoints kept (the oldest are deleted)."""
    save_optimizer: bool = True
    """Periodic checkpoints hold the optimizer state (about 2x the weights' size for Adam); False writes
    weights-only periodic checkpoints, from which a resume starts Adam's moments afresh. The final checkpoint
    and the Ctrl-C checkpoint always hold it."""
    sample_every: int = 5
    """Log sample completions every this many iterations (0: never)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), _field_types(type(self))[field.name])
        self._check_ranges()
        self._check_combinations()
        self._check_device()

    def _check_ranges(self) -> None:
        if not self.temperature > 0:  # before the generic check: this one says what to do instead
            raise ValueError(
                f"temperature must be positive, got {self.temperature}: rollouts must sample (0 would be greedy); "
                "evaluate(prompts, temperature=0) decodes greedily"
            )
        for name in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs", "kl_horizon",
                     "group_size", "keep_checkpoints"):
            _require(self, name, lambda v: v >= 1, ">= 1")
        # A learning rate of 0 is allowed: it freezes the policy (or the critic) while the other learns.
        for name in ("learning_rate", "value_learning_rate", "vf_coef", "ent_coef", "init_kl_coef", "checkpoint_every",
                     "sample_every", "seed"):
            _require(self, name, lambda v: v >= 0, ">= 0")
        for name in ("lr_decay_episodes", "adam_eps", "max_grad_norm",
                     "cliprange", "cliprange_value", "target_kl", "kl_target", "reward_clip"):
            _require(self, name, lambda v: v > 0, "positive")
        for name in ("gamma", "lam"):
            _require(self, name, lambda v: 0 <= v <= 1, "in [0, 1]")
        _require(self, "ratio_threshold", lambda v: v > 1, "> 1 (an unchanged policy's mean ratio is 1)")
        _require(self, "lora_rank", lambda v: v >= 0, ">= 0 (0: no LoRA)")
        _require(self, "lora_alpha", lambda v: v > 0, "positive")
        _require(self, "lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)")
        if not all(name.strip() for name in self.lora_target_modules.split(",")):
            raise ValueError(f"lora_target_modules must be comma-separated module names (or all-linear), got "
                             f"{self.lora_target_modules!r}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={self.top_k}, top_p={self.top_p}")

    def _check_combinations(self) -> None:
        if self.advantage != "gae" and (self.group_size < 2 or self.batch_size % self.group_size):
            raise ValueError(
                f"{self.advantage} needs group_size >= 2 dividing batch_size {self.batch_size}, got {self.group_size}"
            )
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of mini_batch_size {self.mini_batch_size}"
            )
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"mini_batch_size {self.mini_batch_size} is not a multiple of "
                f"gradient_accumulation_steps {self.gradient_accumulation_steps}"
            )
        if self.kl_in_loss and self.kl_estimator == "k1":
            raise ValueError(
                "kl_in_loss needs kl_estimator k2 or k3 (or None: k2): k1's gradient at sampled tokens is zero in "
                "expectation"
            )
        if self.kl_estimator == "full" and not self.kl_in_loss:
            raise ValueError(
                "kl_estimator 'full' needs kl_in_loss=True: as a reward, the exact KL at a position does not depend "
                "on the token sampled there, so the policy gradient loses the KL's pull on that token's choice"
            )
        if self.adaptive_kl and self.init_kl_coef == 0:
            raise ValueError(
                "adaptive_kl needs init_kl_coef > 0: the controller scales the weight, so from 0 it stays 0; "
                "for no KL penalty set adaptive_kl=False"
            )
        if self.lora_rank and self.value_model == "separate":
            raise ValueError(
                "lora_rank with value_model 'separate' would hold a second copy of the base weights for the critic; "
                "use value_model 'shared' (the value head on the policy's trunk)"
            )
        if self.lora_rank:
            from textenv.agents.lora import require_peft

            require_peft("lora_rank")
        if self.top_k != 0 or self.top_p != 1.0:
            raise ValueError(
                f"top_k={self.top_k}, top_p={self.top_p}: top_k/top_p truncate the sampling distribution while PPO's "
                "ratio and KL use the full one; train at top_k=0, top_p=1.0 and use them in evaluate()/generate()"
            )

    def _check_device(self) -> None:
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {self.device!r} was asked for but torch.cuda.is_available() is False")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ValueError(
                    f"device {self.device!r} was asked for but there are {torch.cuda.device_count()} CUDA device(s)"
                )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {self.device!r} was asked for but torch.backends.mps.is_available() is False")

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
        """The estimator in effect: ``kl_estimator``, or k1 in the reward and k2 in the loss (whose expected
        gradient is that of KL(policy || reference), where k3's is the reverse KL's)."""
        return self.kl_estimator or ("k2" if self.kl_in_loss else "k1")

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


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The fields' annotations as types (this module's ``from __future__`` keeps them as strings)."""
    return typing.get_type_hints(cls)


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Refuse ``value`` unless it fits ``hint`` (int, float, bool, str, a Literal, or a union with None)."""
    if not _fits(value, hint):
        raise ValueError(f"{name} must be {_describe(hint)}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:  # an int is a fine float; a bool is not a number here (True would pass as 1)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    return {int: "an integer", float: "a number", bool: "True or False", str: "a string", type(None): "None"}.get(
        hint, hint.__name__
    )


def _require(config: PPOConfig, name: str, ok: typing.Callable[[Any], bool], what: str) -> None:
    """Refuse a field whose value (when not None) fails ``ok``; NaN fails every comparison, so it is refused too."""
    value = getattr(config, name)
    if value is None:
        return
    if isinstance(value, float) and math.isinf(value) and name != "ratio_threshold":
        raise ValueError(f"{name} must be finite, got {value}")
    if not ok(value):
        optional = " (or None)" if type(None) in typing.get_args(_field_types(type(config))[name]) else ""
        raise ValueError(f"{name} must be {what}{optional}, got {value}")
