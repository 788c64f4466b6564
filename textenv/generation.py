"""Sampling a causal LM in the vector env: the policy keeps the KV cache, the env appends ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from textenv.envs.text_gen_vector import TextGenVectorEnv


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How the next token is drawn from the logits."""

    temperature: float = 1.0
    """Divides the logits; 0 means greedy."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p (1.0: all)."""

    def warpers(self) -> LogitsProcessorList:
        """transformers' logits warpers for these settings."""
        warpers = LogitsProcessorList()
        if self.temperature not in (0.0, 1.0):
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


@dataclass
class Episodes:
    """Finished episodes of one synchronous rollout, one row per env.

    Attributes:
        prompts: (N,) prompt texts.
        completions: (N,) completion texts.
        rewards: (N,) total reward per episode.
        reward_terms: each term's (N,) values by name.
        completion_ids: (N, T) the sampled tokens (pad after the episode ended).
        completion_mask: (N, T) 1 for the tokens of the episode.
    """

    prompts: list[str]
    completions: list[str]
    rewards: np.ndarray
    reward_terms: dict[str, np.ndarray]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def generate_episodes(
    model: torch.nn.Module,
    env: TextGenVectorEnv,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    seed: int | None = None,
    prompts: list[str] | None = None,
    progress: bool = False,
) -> Episodes:
    """Run one episode in every row of ``env`` with ``model`` choosing the tokens.

    Every row starts together and the loop stops when all have ended; the model sees
    the prompt once, then one new token per step through its KV cache.

    Args:
        model: a transformers causal LM on ``env.device``.
        env: a vector env in ``"Disabled"`` autoreset mode (rows freeze when they end).
        sampling: temperature, top-k and top-p.
        seed: seeds the env's prompt draw and the sampling.
        prompts: one prompt per row instead of drawing from the prompt set.
        progress: show a progress bar over the generated tokens.
    """
    if env.autoreset_mode != AutoresetMode.DISABLED:
        raise ValueError("generate_episodes needs an env with autoreset_mode='Disabled'")
    generator = torch.Generator(device=env.device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    obs, _ = env.reset(seed=seed, options=None if prompts is None else {"prompts": prompts})
    width, limit = env.task.prompt_width, env.task.max_new_tokens
    attention = obs["attention_mask"][:, :width]  # (N, P)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (N, P)
    inputs, cache = obs["input_ids"][:, :width], None
    warpers = sampling.warpers()
    done = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    ended_info: dict[str, Any] = {"prompt": [None] * env.num_envs, "completion": [None] * env.num_envs}
    rewards = np.zeros(env.num_envs)
    terms: dict[str, np.ndarray] = {name: np.zeros(env.num_envs) for name in env.task.rewards.names}
    bar = tqdm(total=limit, desc="generating", unit="tok", disable=not progress, leave=False)
    for _ in range(limit):
        out = model(
            input_ids=inputs, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True
        )
        cache = out.cache
        logits = out.logits[:, -1, :].float()  # (N, V)
        logits = logits[:, : env.task.vocab_size]
        actions = _sample(warpers(None, logits), sampling, generator)  # (N,)
        _, reward, terminated, truncated, info = env.step(actions)
        if "completion" in info:
            _collect(info, ended_info, rewards, terms, reward)
        done |= terminated | truncated
        bar.update(1)
        if bool(done.all()):
            break
        inputs = actions.unsqueeze(1)  # (N, 1)
        attention = torch.cat([attention, torch.ones_like(inputs)], dim=1)  # (N, P + t + 1)
        positions = positions[:, -1:] + 1  # (N, 1)
    bar.close()
    ids, mask = env.completion_tokens()  # (N, T) each
    return Episodes(ended_info["prompt"], ended_info["completion"], rewards, terms, ids, mask)


def _sample(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    if sampling.temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits, dim=-1)  # (N, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _collect(info: dict, ended: dict, rewards: np.ndarray, terms: dict, reward: torch.Tensor) -> None:
    rows = np.flatnonzero(info["_completion"])
    for i in rows:
        ended["prompt"][i] = info["prompt"][i]
        ended["completion"][i] = info["completion"][i]
    rewards[rows] = reward.cpu().numpy()[rows]
    for name, values in terms.items():
        values[rows] = info["reward_terms"][name][rows]
