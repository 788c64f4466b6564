"""The single text-generation env (``textenv/TextGen-v0``), for SB3, teaching and checks.

It is the vector env with one row, on the CPU, with numpy observations, so that both
share one implementation of the episode logic.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from textenv.envs.text_gen_vector import TextGenVectorEnv


class TextGenEnv(gym.Env):
    """Generate a completion token by token: an action is the next token id.

    Observation: a dict of (L,) int64 arrays ``input_ids`` (the prompt left-padded
    to P positions, then the completion) and ``attention_mask``. Action:
    ``Discrete(vocab)``. An EOS action ends the episode (``terminated``); the
    ``max_new_tokens`` limit truncates it. The reward comes at the last step, from
    the reward spec's sources; ``info["reward_terms"]`` holds each term by name and,
    where a source gives per-token rewards, ``info["token_rewards"]`` the (T,) array
    whose sum is part of the reward.

    Options are those of :meth:`textenv.envs.task.TextTask.build`: ``model``,
    ``tokenizer``, ``prompts``, ``max_new_tokens``, ``max_prompt_tokens``,
    ``reward``, ``chat_template``, ``eos_token_ids``, ``vocab_size``,
    ``plugin_manager``. As in TRL, ``reward`` may be a function or a list mixing
    functions and source names (``reward=[fn, "sentiment"]``), and ``prompts`` a
    ``datasets.Dataset`` (its ``prompt`` column) or conversations, rendered with the
    tokenizer's chat template.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **task_options: Any):
        self.core = TextGenVectorEnv(
            1, device="cpu", autoreset_mode=AutoresetMode.DISABLED, render_mode=render_mode, **task_options
        )
        self.task = self.core.task
        self.render_mode = render_mode
        self.observation_space = self.core.single_observation_space
        self.action_space = self.core.single_action_space
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode on a prompt drawn from the prompt set.

        Args:
            seed: seeds the env's generator (which draws the prompts).
            options: ``{"prompt": "..."}`` to start from a given prompt instead.
        """
        super().reset(seed=seed)
        self.core.row_rngs[0] = self.np_random
        options = dict(options or {})
        prompt = options.pop("prompt", None)
        if options:
            raise ValueError(f"unknown reset options: {', '.join(options)}")
        obs, info = self.core.reset(options=None if prompt is None else {"prompts": [prompt]})
        self._done = False
        return self._row(obs), {"prompt": self.core.row_prompts[0]}

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended: call reset() before step()")
        obs, reward, terminated, truncated, info = self.core.step(np.asarray([action]))
        self._done = bool(terminated[0] or truncated[0])
        return self._row(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), _first_row(info)

    def render(self) -> str | None:
        """The prompt and the completion so far, the completion in ⟦ ⟧: returned in ``ansi`` mode,
        printed in ``human`` mode; None without a render mode, as Gymnasium's envs do."""
        if self.render_mode == "ansi":
            return self.core.render()[0]
        if self.render_mode == "human":
            self.core.render()  # prints
        return None

    @staticmethod
    def _row(obs) -> dict[str, np.ndarray]:
        return {k: v[0].numpy() for k, v in obs.items()}


def _first_row(info: dict[str, Any]) -> dict[str, Any]:
    """Gymnasium's vector info for one row, back to a plain single-env info."""
    out = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            out[key] = _first_row(value)
        else:
            item = value[0]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out
