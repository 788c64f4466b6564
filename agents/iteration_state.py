"""What one PPO iteration changes, kept as it was at the iteration's start, so that a failed iteration can be
undone: the ``last-good`` checkpoint written when training stops is then the state at the end of the last good
iteration, not a mix of it and a half-done update."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from textenv.agents import ppo_checkpoint

if TYPE_CHECKING:
    from textenv.agents.ppo import PPO


class IterationState:
    """The agent's state at the start of an iteration: random streams, reward and score statistics, the KL
    coefficient and the learning rates; with ``weights``, the trainable parameters and Adam's state too.

    The weights are copied into buffers allocated once (on the CPU for a GPU agent): for full fine-tuning
    about three times the trainable weights' size (weights and Adam's two moments), which is why the agent
    keeps them only where it can write a ``last-good`` checkpoint (a run directory).
    """

    def __init__(self) -> None:
        self._buffers: dict[int, torch.Tensor] = {}  # id of a live tensor -> its copy
        self._optimizer_keys: dict[int, list[str] | None] = {}  # parameter -> its Adam state's keys at the start
        self._cheap: dict[str, Any] = {}

    def capture(self, agent: PPO, *, weights: bool) -> None:
        """Keep ``agent``'s state as it is now."""
        self._cheap = {
            "rng": ppo_checkpoint.rng_state(agent),
            "prompt_rng": agent.prompt_rng.bit_generator.state,
            "rewards": agent.task.rewards.state_dict(),
            "score_stats": (agent.score_stats.mean.copy(), agent.score_stats.var.copy(), agent.score_stats.count),
            "kl_ctl": agent.kl_ctl.state_dict(),
            "lrs": [group["lr"] for group in agent.optimizer.param_groups],
        }
        self._optimizer_keys = {}
        if not weights:
            return
        for param in _trainable(agent):
            self._keep(param)
            state = agent.optimizer.state.get(param)
            self._optimizer_keys[id(param)] = sorted(state) if state else None  # None: Adam has not stepped it
            for value in (state or {}).values():
                if torch.is_tensor(value):
                    self._keep(value)

    def restore(self, agent: PPO) -> None:
        """Put ``agent`` back in the state :meth:`capture` kept (its weights too, if it kept them)."""
        cheap = self._cheap
        ppo_checkpoint.set_rng_state(agent, cheap["rng"])
        agent.prompt_rng.bit_generator.state = cheap["prompt_rng"]
        agent.task.rewards.load_state_dict(cheap["rewards"])
        mean, var, count = cheap["score_stats"]
        agent.score_stats.mean, agent.score_stats.var, agent.score_stats.count = np.copy(mean), np.copy(var), count
        agent.kl_ctl.load_state_dict(cheap["kl_ctl"])
        for group, lr in zip(agent.optimizer.param_groups, cheap["lrs"]):
            group["lr"] = lr
        if not self._optimizer_keys:
            return
        with torch.no_grad():
            for param in _trainable(agent):
                param.copy_(self._buffers[id(param)])
                if self._optimizer_keys[id(param)] is None:
                    agent.optimizer.state.pop(param, None)  # its first step came after the start
                    continue
                for value in agent.optimizer.state[param].values():
                    if torch.is_tensor(value):
                        value.copy_(self._buffers[id(value)])

    def _keep(self, tensor: torch.Tensor) -> None:
        buffer = self._buffers.get(id(tensor))
        if buffer is None or buffer.shape != tensor.shape:
            device = "cpu" if tensor.device.type == "cuda" else tensor.device
            buffer = self._buffers[id(tensor)] = torch.empty_like(tensor, device=device)
        buffer.copy_(tensor.detach())


def _trainable(agent: PPO) -> list[torch.nn.Parameter]:
    return [p for p in agent.policy.parameters() if p.requires_grad]
