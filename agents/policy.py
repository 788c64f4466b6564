"""The policy: a causal LM with a scalar value head, and the device/precision helpers."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import sys
from pathlib import Path

import torch
from torch import nn

from textenv.models import default_device


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


def store_linear_weights_in_bf16(model: nn.Module) -> None:
    """Keep a frozen model's Linear weights in bf16, for a model that only runs under bf16 autocast.

    Autocast casts every fp32 Linear weight to bf16 at each forward. A weight stored in bf16 is
    the same matmul operand (both round to nearest even), without the cast and at half the
    memory. The input embedding, the norms, and an output head tied to the input embedding
    stay fp32, so the residual stream is what it was.
    """
    tied = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight is not tied:
            module.to(torch.bfloat16)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` means CUDA when there is one, else the CPU."""
    if device == "auto":
        return default_device()
    return torch.device(device)


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


@functools.cache
def keep_freed_cpu_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves blocks above its mmap threshold (at most 32 MB) from fresh
    ``mmap`` pages and unmaps them on free, so each PPO update's large temporaries
    (weight casts, logits, gradients) are page-faulted in and zeroed by the kernel
    again: 1.5 million faults per step of SmolLM2, and a fifth of the step. With no
    mmap and no trimming the heap keeps those pages and the next update reuses them.
    The process then holds its peak memory until it exits. Process-wide; set once.

    Returns:
        Whether the setting took (False off Linux/glibc, e.g. musl or macOS).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls beat fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(device: torch.device, precision: str) -> bool:
    """Whether to autocast to bf16 for this device and precision setting."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on the device (fp32 master weights), or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
