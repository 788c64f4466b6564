"""The policy: a causal LM with a scalar value head, and the frozen reference PPO measures its KL against."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from textenv.agents import lora
from textenv.devices import store_linear_weights_in_bf16
from textenv.generation import position_ids


class ActorCritic(nn.Module):
    """A causal LM (the actor) and a value head on its last hidden state (the critic).

    With ``separate_value_model=True`` the value head sits on its own copy of the LM's decoder (without the LM
    head: an untied head would never get a gradient there, which DDP refuses, and it would only cost memory)
    instead of sharing the policy's.
    """

    def __init__(self, lm: nn.Module, *, with_value_head: bool = True, separate_value_model: bool = False):
        super().__init__()
        self.lm = lm
        hidden = lm.get_input_embeddings().embedding_dim
        self.value_head = nn.Linear(hidden, 1) if with_value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.value_model = copy.deepcopy(lm.get_decoder()) if with_value_head and separate_value_model else None

    def param_groups(self, learning_rate: float, value_learning_rate: float | None) -> list[dict[str, Any]]:
        """The trainable parameters as the optimizer's groups: the policy's, then the critic's (head and separate
        value model) at ``value_learning_rate`` (None: ``learning_rate``)."""
        critic = [p for m in (self.value_head, self.value_model) if m is not None
                  for p in m.parameters() if p.requires_grad]
        critic_ids = {id(p) for p in critic}
        policy = [p for p in self.parameters() if p.requires_grad and id(p) not in critic_ids]
        groups = [{"params": policy, "lr": learning_rate}]
        if critic:
            groups.append({"params": critic, "lr": learning_rate if value_learning_rate is None
                           else value_learning_rate})
        return groups

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
        positions = position_ids(attention_mask)  # (B, L)
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
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
            ).last_hidden_state[:, -(t + 1) : -1]  # (B, T, H)
        return logits, self.value_of_hidden(hidden)


def prepare_models(
    model: nn.Module, reference: nn.Module | None, config: Any, device: torch.device, bf16: bool,
    lora_base: Callable[[], str | None],
) -> tuple[nn.Module, Any]:
    """The policy's LM ready to train and its KL reference.

    The LM goes to ``device`` in fp32 (eager attention on a CPU), with fresh LoRA adapters when the config asks
    for them. The reference is None where the config uses none; a LoRA policy's is itself with its adapter
    disabled (one copy of the base weights); else ``reference`` (or a frozen copy of the LM), with its Linear
    weights stored in bf16 under bf16 autocast, the only way it runs (same logits, less memory).

    Args:
        model: the causal LM (a ``peft`` model is taken as it is).
        reference: a reference of its own (``PPO.load`` of a run started from another model), or None.
        config: the agent's :class:`~textenv.agents.PPOConfig`.
        device: where both run.
        bf16: whether they run under bf16 autocast.
        lora_base: where the base weights come from, recorded in new adapters' config.

    Raises:
        ValueError: a LoRA model whose base records no ``name_or_path`` (no checkpoint could rebuild it).
    """
    model = model.to(device).float()
    prefer_eager_attention(model, device)
    if config.lora_rank and not lora.is_peft_model(model):
        model = lora.wrap(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                          targets=config.lora_target_modules, base=lora_base())
    is_lora = lora.is_peft_model(model)  # PPO(env, model=get_peft_model(...)) too
    if is_lora and not lora.base_source(model):
        raise ValueError("the LoRA model's base records no name_or_path, so no checkpoint could rebuild it: "
                         "load the base with from_pretrained(path), or give lora_rank= and no model")
    if is_lora and bf16:  # the frozen base only runs under bf16 autocast, as a reference does
        lora.store_base_in_bf16(model)
    if not config.uses_reference:
        return model, None
    if is_lora:
        return model, lora.AdapterDisabled(model)
    reference = reference.to(device) if reference is not None else frozen_copy(model)
    prefer_eager_attention(reference, device)
    if bf16:
        store_linear_weights_in_bf16(reference)
    return model, reference


def prefer_eager_attention(model: nn.Module, device: torch.device) -> None:
    """Eager attention on a CPU: with short padded sequences it beats SDPA there (``benchmarks/ppo_throughput.py``)."""
    if device.type == "cpu" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")


def frozen_copy(model: nn.Module) -> nn.Module:
    """An evaluation-mode copy of ``model`` that takes no gradients (the KL reference)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref
