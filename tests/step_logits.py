"""The logits a model gives at each step of a rollout, read with a forward hook: the tests compare the KV-cache
decoding against a full forward through them (the rollout itself keeps no per-token log-probs: PPO recomputes
them with one batched forward)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def step_logits(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the (N, V') logits at the last position of each forward of ``model`` while the block runs."""
    seen: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, args, out: seen.append(out.logits[:, -1].detach().float()))
    try:
        yield seen
    finally:
        handle.remove()


def sampled_logprobs(seen: list[torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(N, T) log-probs of the sampled ``tokens`` under the step logits (0 past each episode's end)."""
    logits = torch.stack(seen[: tokens.shape[1]], dim=1)[..., :vocab]  # (N, T, V)
    return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1) * mask  # (N, T)
