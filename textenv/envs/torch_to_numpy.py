"""``TorchToNumpy``: the torch vector env as numpy arrays, for Gymnasium's vector wrappers and numpy code.

:class:`~textenv.envs.TextGenVectorEnv` keeps its episodes in torch tensors, so the agent's token loop
never leaves the device. Gymnasium's vector wrappers (``RecordEpisodeStatistics``, ``NormalizeReward``)
and SB3's policies compute on numpy arrays; wrapped in ``TorchToNumpy`` the env hands them numpy, the
inverse of Gymnasium's ``gymnasium.wrappers.vector.NumpyToTorch``. (Gymnasium's generic
``ArrayConversion`` needs the ``array-api-compat`` package and converts ``info`` too, whose prompt and
completion strings it cannot take; this env's ``info`` is numpy already.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorWrapper


class TorchToNumpy(VectorWrapper):
    """A vector env on torch tensors, seen through numpy arrays.

    Observations, rewards, terminations and truncations come back as numpy arrays on the host
    (``int64`` ids and mask, ``float32`` rewards, ``bool`` flags); actions may be a numpy array, a list
    or a tensor. ``info`` passes through as it is (the textenv env lays it out in numpy already).
    It wraps a :class:`~textenv.envs.TextGenVectorEnv`, or any vector env that returns torch tensors.

    Example::

        envs = TorchToNumpy(gym.make_vec("textenv/TextGen-v0", num_envs=8, vectorization_mode="vector_entry_point"))
        envs = gymnasium.wrappers.vector.RecordEpisodeStatistics(envs)
    """

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset as the env does; the observations as numpy arrays."""
        obs, info = self.env.reset(seed=seed, options=options)
        return to_numpy(obs), info

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step as the env does; observations, rewards, terminations and truncations as numpy arrays."""
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        return to_numpy(obs), to_numpy(rewards), to_numpy(terminated), to_numpy(truncated), info


def to_numpy(value: Any) -> Any:
    """A tensor as a numpy array on the host; a dict of them, each so; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {key: to_numpy(v) for key, v in value.items()}
    return value
