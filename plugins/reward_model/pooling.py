"""How a reward model reads one score from its backbone: the backbone's own head, or a mean-pooled one.

``AutoModelForSequenceClassification`` scores a BERT-family encoder from its [CLS] token through
its pooler, and a causal LM from its last token. Sentence-transformers models such as the default
all-MiniLM-L6-v2 were trained to be read by the attention-masked *mean* of their last hidden
states, not through their pooler; such a backbone says so in its ``1_Pooling/config.json``, which
:func:`backbone_pooling` reads. Fine-tuned on 463 pairs, the mean-pooled MiniLM reached 0.905
held-out accuracy where the [CLS]-pooled one reached 0.890 (docs/BENCHMARKS.md, "Reward model").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.modeling_outputs import SequenceClassifierOutput

HEAD_FILENAME = "score_head.safetensors"
"""The mean-pooled scorer's head, saved beside its backbone in a member directory."""


def backbone_pooling(path: str) -> str:
    """``"mean"`` for a sentence-transformers backbone that declares mean pooling, else ``"head"``.

    Args:
        path: the backbone's local directory (a hub id or a missing folder gives ``"head"``).
    """
    config = Path(path) / "1_Pooling" / "config.json"
    try:
        return "mean" if json.loads(config.read_text()).get("pooling_mode_mean_tokens") else "head"
    except (OSError, ValueError, AttributeError):
        return "head"


class MeanPooledScorer(torch.nn.Module):
    """A scalar head on the attention-masked mean of a backbone's last hidden states.

    It answers like a transformers sequence classifier (``model(**batch).logits`` is (B, 1)),
    so the trainer and :class:`~textenv.plugins.reward_model.model.RewardModel` treat both alike.

    Attributes:
        backbone: the bare encoder or decoder (``AutoModel``).
        score: the (hidden → 1) linear head.
        config: the backbone's config (its length limits are the scorer's).
    """

    def __init__(self, backbone: Any):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.score = torch.nn.Linear(backbone.config.hidden_size, 1)
        # a transformers classifier head's start: small weights, no bias (it draws from torch's seeded RNG)
        torch.nn.init.normal_(self.score.weight, std=getattr(backbone.config, "initializer_range", 0.02))
        torch.nn.init.zeros_(self.score.bias)

    @property
    def base_model(self) -> Any:
        """The backbone, as transformers models name theirs (the part ``freeze_backbone`` freezes)."""
        return self.backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> SequenceClassifierOutput:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        hidden = out.last_hidden_state  # (B, T, H)
        mask = attention_mask[..., None].to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return SequenceClassifierOutput(logits=self.score(pooled.to(self.score.weight.dtype)))  # (B, 1)

    def save_pretrained(self, path: str | Path) -> None:
        """The backbone as a transformers directory, the head as ``score_head.safetensors`` in it."""
        self.backbone.save_pretrained(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.score.state_dict().items()},
                  str(Path(path) / HEAD_FILENAME))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MeanPooledScorer:
        """Load what :meth:`save_pretrained` wrote."""
        from transformers import AutoModel

        scorer = cls(AutoModel.from_pretrained(path))
        scorer.score.load_state_dict(load_file(str(Path(path) / HEAD_FILENAME)))
        return scorer
