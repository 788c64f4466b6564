"""Sampling a causal LM in the vector env: the policy keeps the KV cache, the env appends ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, StaticCache, TopKLogitsWarper, TopPLogitsWarper

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
        """transformers' top-k and top-p filters for these settings.

        The temperature is not among them: :func:`next_tokens` divides the logits by it
        first (PPO's log-probs are those of the temperature-scaled distribution, before
        top-k and top-p).
        """
        warpers = LogitsProcessorList()
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
        rewards: (N,) total reward per episode (episode-level terms plus per-token rewards).
        reward_terms: each term's (N,) values by name.
        prompt_ids: (N, P) the prompts, left-padded.
        prompt_mask: (N, P) 1 for real prompt tokens.
        completion_ids: (N, T) the sampled tokens (pad after the episode ended).
        completion_mask: (N, T) 1 for the tokens of the episode.
        token_rewards: (N, T) per-token rewards from sources that give them (zeros if none).
    """

    prompts: list[str]
    completions: list[str]
    rewards: np.ndarray
    reward_terms: dict[str, np.ndarray]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    token_rewards: torch.Tensor

    @property
    def scores(self) -> np.ndarray:
        """(N,) the episode-level part of the reward (the total less the per-token rewards)."""
        return self.rewards - self.token_rewards.sum(1).cpu().double().numpy()


@torch.no_grad()
def generate_episodes(
    model: torch.nn.Module,
    env: TextGenVectorEnv,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    seed: int | None = None,
    generator: torch.Generator | None = None,
    prompts: list[str] | None = None,
    progress: bool = False,
    static_cache: bool = False,
) -> Episodes:
    """Run one episode in every row of ``env`` with ``model`` choosing the tokens.

    Every row starts together and the loop stops when all have ended; the model sees
    the prompt once, then one new token per step through its KV cache. The loop adds no
    device read of its own: whether every row has ended is counted on the host from the
    env's info (which names the rows that ended), not read back from a tensor. The env's
    step reads which rows ended, once per token (its rewards run on the host). Normalized reward
    terms score every row with the same statistics, updated once with the whole batch at
    the end (:meth:`textenv.rewards.RewardPipeline.one_batch`).

    Args:
        model: a transformers causal LM on ``env.device``.
        env: a vector env in ``"Disabled"`` autoreset mode (rows freeze when they end).
        sampling: temperature, top-k and top-p.
        seed: seeds the env's prompt draw and the sampling.
        generator: draws the samples (its state advances); made from ``seed`` if None.
        prompts: one prompt per row instead of drawing from the prompt set.
        progress: show a progress bar over the generated tokens.
        static_cache: keep the keys and values in a cache allocated once for the whole
            episode (transformers' ``StaticCache``, prompt width + ``max_new_tokens``
            positions) instead of one that grows by a concatenation each step. Each step
            then attends over all preallocated positions (the unwritten ones masked): the
            same distribution (in fp32 the same tokens, logits within 1e-5), while under
            bf16 the longer sums round differently, so a sampled token can differ. Slower on
            a CPU; on a GPU
            it gives the decode step fixed shapes and addresses, what ``torch.compile`` and
            CUDA graphs need (``benchmarks/gpu_check.py`` times both).
    """
    if env.autoreset_mode != AutoresetMode.DISABLED:
        raise ValueError("generate_episodes needs an env with autoreset_mode='Disabled'")
    if generator is None:
        generator = torch.Generator(device=env.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
    obs, _ = env.reset(seed=seed, options=None if prompts is None else {"prompts": prompts})
    n, width, limit = env.num_envs, env.task.prompt_width, env.task.max_new_tokens
    prompt_ids, attention = obs["input_ids"][:, :width], obs["attention_mask"][:, :width]  # (N, P)
    positions = position_ids(attention)  # (N, P)
    # The whole episode's attention mask, allocated once: the prompt's, then 1 for every
    # completion position. Each step reads a prefix (a view, no concatenation); a row that
    # ended keeps attending to its own frozen tokens, which only its ignored logits see.
    full_mask = torch.cat([attention, attention.new_ones(n, limit)], dim=1)  # (N, P + T)
    cache = StaticCache(config=model.config, max_cache_len=width + limit) if static_cache else None
    inputs = prompt_ids
    warpers = sampling.warpers()
    running = n  # rows not ended yet, counted on the host from the env's info: no device sync per token
    ended = _Ended(n, limit, env.task.rewards.names)
    bar = tqdm(total=limit, desc="generating", unit="tok", disable=not progress, leave=False)
    # One set of normalization statistics for the whole batch, though rows end at different steps.
    with env.task.rewards.one_batch():
        for t in range(limit):
            # A static cache masks the whole preallocated length (its unwritten positions are
            # also behind the causal mask); a growing cache takes the mask up to this token.
            attention = full_mask if static_cache else full_mask[:, : width + t]  # (N, P + t)
            out = model(input_ids=inputs, attention_mask=attention, position_ids=positions, cache=cache, use_cache=True)
            cache = out.cache
            actions = next_tokens(out.logits[:, -1, : env.task.vocab_size], sampling, warpers, generator)  # (N,)
            _, reward, _, _, info = env.step(actions)
            if "completion" in info:
                ended.collect(info, reward)
                running -= int(info["_completion"].sum())  # host numpy: the rows that ended at this step
            bar.update(1)
            if running == 0:
                break
            inputs = actions.unsqueeze(1)  # (N, 1)
            positions = positions[:, -1:] + 1  # (N, 1)
    bar.close()
    ids, mask = env.completion_tokens()  # (N, T) each
    return Episodes(
        prompts=ended.prompts, completions=ended.completions, rewards=ended.rewards,
        reward_terms=ended.terms, prompt_ids=prompt_ids, prompt_mask=full_mask[:, :width],
        completion_ids=ids, completion_mask=mask, token_rewards=ended.token_rewards.to(env.device),
    )


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions of a left-padded batch's (B, L) mask: each row counts its own tokens from 0 (padding 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def next_tokens(
    logits: torch.Tensor, sampling: SamplingConfig, warpers: LogitsProcessorList, generator: torch.Generator
) -> torch.Tensor:
    """Draw the next token of each row from the model's (N, V) logits.

    Args:
        logits: (N, V) the model's logits for the next token.
        sampling: temperature, top-k and top-p.
        warpers: ``sampling.warpers()`` (made once per rollout).
        generator: the random numbers of the draw.

    Returns:
        (N,) the tokens, drawn from the temperature-scaled distribution filtered by top-k and top-p.
    """
    scaled = logits.float() / (sampling.temperature or 1.0)  # (N, V)
    return sample_tokens(warpers(None, scaled), sampling, generator)  # (N,)


def sample_tokens(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw one token per row from (N, V) logits already warped by ``sampling``; greedy at temperature 0.

    The draw is an inverse CDF with the running sum in float64: in float32 the sum's grid near
    1 is 6e-8 wide, so tokens below it got no interval (a 3-4e-4 total-variation error at
    V = 49152, tens of thousands of tokens never drawn). The float32 probabilities themselves
    are each within a few ulp (1e-7 relative) of the exact ones. Everything stays on the
    logits' device; the random numbers come from ``generator`` only.
    """
    if sampling.temperature == 0.0:
        return logits.argmax(-1)
    # float64 inverse CDF, timed at V = 49152 on one CPU thread (N = 16 / 64): 1.7 / 7.4 ms, against
    # Gumbel-max in float64 22 / 88 ms (V exponentials per row) and torch.multinomial 21 / 84 ms.
    cdf = torch.softmax(logits, dim=-1).double().cumsum_(-1)  # (N, V)
    # u < cdf[:, -1] (a float64 uniform is below 1, and the product rounds down), so the index is < V.
    u = torch.rand(len(cdf), 1, generator=generator, device=cdf.device, dtype=torch.float64) * cdf[:, -1:]  # (N, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(1)  # (N,) the first token whose cdf > u


class _Ended:
    """Gathers what the env reports for each row when its episode ends."""

    def __init__(self, n: int, limit: int, names: list[str]):
        self.prompts: list[str] = [""] * n
        self.completions: list[str] = [""] * n
        self.rewards = np.zeros(n)
        self.terms = {name: np.zeros(n) for name in names}
        self.token_rewards = torch.zeros(n, limit)  # (N, T)

    def collect(self, info: dict[str, Any], reward: torch.Tensor) -> None:
        rows = np.flatnonzero(info["_completion"])
        reward = reward.cpu().numpy()
        for i in rows:
            self.prompts[i] = info["prompt"][i]
            self.completions[i] = info["completion"][i]
            self.rewards[i] = reward[i]
            if "token_rewards" in info:
                per_token = torch.as_tensor(info["token_rewards"][i], dtype=torch.float32)
                self.token_rewards[i, : len(per_token)] = per_token
        for name, values in self.terms.items():
            values[rows] = info["reward_terms"][name][rows]
