"""The policy: a causal LM with a scalar value head, and the frozen copy PPO measures its KL against."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ActorCritic(nn.Module):
    """A causal LM (the actor) and a value head on its last hidden state (the critic).

    With ``separate_value_model=True`` the value head sits on its own copy of the LM's
    trunk instead of sharing the policy's.
    """

    def __init__(self, lm: nn.Module, *, with_value_head: bool = True, separate_value_model: bool = False):
        super().__init__()
        self.lm = lm
        hidden = lm.get_input_embeddings().embedding_dim
        self.value_head = nn.Linear(hidden, 1) if with_value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.value_model = copy.deepcopy(lm) if with_value_head and separate_value_model else None

    @property
    def shares_trunk(self) -> bool:
        """Whether values come from the policy's own hidden states (so the rollout gets them for free)."""
        return self.value_head is not None and self.value_model is None

    def value_of_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Values (...,) in float32 of last-layer hidden states (..., H), whatever the autocast."""
        with torch.autocast(hidden.device.type, enabled=False):  # else bf16 autocast recasts the Linear
            return self.value_head(hidden.float()).squeeze(-1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_completion: int, *, values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and values at the completion positions of full sequences.

        Args:
            input_ids: (B, L) prompt (left-padded) then completion, L = P + T.
            attention_mask: (B, L).
            num_completion: T.
            values: also compute the values.

        Returns:
            logits (B, T, V) predicting each completion token, and values (B, T) of the
            state before each token (None if not asked for or there is no value head).
        """
        t = num_completion
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        want_values = values and self.value_head is not None
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
            logits_to_keep=t + 1, output_hidden_states=want_values and self.value_model is None, use_cache=False,
        )
        logits = out.logits[:, :-1]  # (B, T, V): position P-1+t predicts token t
        if not want_values:
            return logits, None
        if self.value_model is None:
            hidden = out.hidden_states[-1][:, -(t + 1) : -1]  # (B, T, H)
        else:
            hidden = self.value_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                output_hidden_states=True, use_cache=False, logits_to_keep=1,
            ).hidden_states[-1][:, -(t + 1) : -1]  # (B, T, H)
        return logits, self.value_of_hidden(hidden)


def frozen_copy(model: nn.Module) -> nn.Module:
    """An evaluation-mode copy of ``model`` that takes no gradients (the KL reference)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref
