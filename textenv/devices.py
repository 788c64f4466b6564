"""Where models run and at what precision: the device, bf16 autocast, and the CPU allocator setting.

The agents (PPO, SFT), the reward model and the demo all pick their device and precision here, so a
setting such as ``precision="auto"`` means the same everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from pathlib import Path

import torch
from torch import nn


def launched_processes() -> int:
    """How many processes a launcher (``accelerate launch``, ``torchrun``) started: 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def default_device() -> torch.device:
    """Return CUDA when it is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` means CUDA when there is one, else the CPU."""
    if device == "auto":
        return default_device()
    return torch.device(device)


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
