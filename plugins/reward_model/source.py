"""``reward_model``: the score a trained reward model (``textenv rm train``) gives each completion.

Two ways to name it in a reward spec::

    reward="reward_model:runs/rm"                       # shorthand: the directory after the colon
    reward="reward_model(path='runs/rm', standardize=True) - 0.1*length"

and ``reward_model_disagreement(path=...)``: the ensemble members' standard deviation,
a bonus for exploring where the model is unsure. Code that picks which pairs to show a
person (active querying) calls :func:`get_reward_model` and its ``score_with_disagreement``.

Each directory is loaded once per device and kept (reloaded if it is trained again).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardError, RewardSource

PREFIX = "reward_model:"


def get_reward_model(path: str | Path, device: str | torch.device | None = None):
    """The reward model saved in ``path``, loaded once per device and then reused.

    Args:
        path: a directory written by ``textenv rm train`` / ``train_reward_model``.
        device: where it runs; None picks :func:`textenv.devices.default_device`.

    Returns:
        A :class:`textenv.plugins.reward_model.RewardModel`.

    Raises:
        RewardModelError: ``path`` holds no reward model.
    """
    from textenv.devices import default_device
    from textenv.plugins.reward_model.model import METADATA_FILENAME

    resolved = Path(path).expanduser().resolve()
    metadata = resolved / METADATA_FILENAME
    stamp = metadata.stat().st_mtime_ns if metadata.is_file() else 0
    device = torch.device(device) if device is not None else default_device()
    return _load(str(resolved), str(device), stamp)


@functools.lru_cache(maxsize=8)
def _load(path: str, device: str, stamp: int):
    from textenv.plugins.reward_model import load_reward_model

    return load_reward_model(path, device=device)


def reward_model(
    prompts: list[str],
    completions: list[str],
    *,
    path: str | None = None,
    standardize: bool = False,
    batch_size: int = 32,
    device: str | None = None,
) -> np.ndarray:
    """A trained reward model's score (ensemble mean) of each completion given its prompt.

    Args:
        prompts: the prompts.
        completions: the completions to score.
        path: the reward model directory.
        standardize: subtract the mean and divide by the std of the model's scores on its
            own training completions (saved at train time), so 0 is a typical completion
            and the scale is comparable across reward models.
        batch_size: sequences per forward pass.
        device: where the model runs (default: CUDA if available, else the CPU).
    """
    if path is None:
        raise ValueError("reward_model needs path=DIR (or write reward_model:DIR)")
    model = get_reward_model(path, device)
    scores = model.score(prompts, completions, batch_size=batch_size)  # (N,)
    if standardize:
        mean, std = model.normalization
        scores = (scores - mean) / std
    return scores


def reward_model_disagreement(
    prompts: list[str],
    completions: list[str],
    *,
    path: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> np.ndarray:
    """The ensemble members' disagreement (std of their scores) on each completion; 0 for one.

    Args:
        prompts: the prompts.
        completions: the completions to score.
        path: the reward model directory.
        batch_size: sequences per forward pass.
        device: where the model runs (default: CUDA if available, else the CPU).
    """
    if path is None:
        raise ValueError("reward_model_disagreement needs path=DIR")
    _, std = get_reward_model(path, device).score_with_disagreement(
        prompts, completions, batch_size=batch_size
    )
    return std


@hookimpl
def textenv_reward_sources():
    return [
        RewardSource(
            "reward_model",
            reward_model,
            "A trained reward model's score (textenv rm train): reward_model(path='DIR') "
            "or reward_model:DIR",
        ),
        RewardSource("reward_model_disagreement", reward_model_disagreement),
    ]


@hookimpl
def textenv_resolve_reward_source(name):
    if not name.startswith(PREFIX):
        return None
    path = name[len(PREFIX) :]
    from textenv.plugins.reward_model.model import METADATA_FILENAME

    if not path or not (Path(path).expanduser() / METADATA_FILENAME).is_file():
        raise RewardError(
            f"{name!r}: {path or '(empty)'} is not a reward model directory "
            f"(no {METADATA_FILENAME}); train one with `textenv rm train`"
        )

    def reward_model_at(
        prompts: list[str],
        completions: list[str],
        *,
        standardize: bool = False,
        batch_size: int = 32,
        device: str | None = None,
    ) -> np.ndarray:
        return reward_model(
            prompts,
            completions,
            path=path,
            standardize=standardize,
            batch_size=batch_size,
            device=device,
        )

    return RewardSource(name, reward_model_at, f"reward model in {path} (ensemble mean)")
