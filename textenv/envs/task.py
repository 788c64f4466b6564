"""The text-generation task shared by the single and the vector env.

It holds what does not change between episodes: the tokenizer, the prompts encoded
once into a left-padded bank, the sizes, the spaces and the reward pipeline.
Conversational prompts are rendered to text with the chat template here, once: from
then on the rendered text is the prompt (in observations, ``info`` and reward sources).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from textenv.models import DEFAULT_MODEL, context_length, load_tokenizer
from textenv.prompts import Conversation, PromptError, load_prompt_rows, render_prompts
from textenv.rewards import RewardPipeline

DEFAULT_PROMPTS = "movie-reviews"
DEFAULT_REWARD = "sentiment_dense + repetition"
"""The reward of the env made without ``reward=`` and of ``textenv train``: VADER's sentiment paid out per token
(its sum is the completion's score, and a value head credits it token by token), less repeated n-grams."""


@dataclass
class TextTask:
    """Everything an episode needs that is fixed at construction.

    Attributes:
        model_name: the model the tokenizer came from (the agent loads the same), or None.
        tokenizer: a transformers tokenizer.
        prompts: the prompt texts (conversations rendered with the chat template).
        prompt_ids: (K, P) the prompts' token ids, left-padded with ``pad_id``.
        prompt_mask: (K, P) 1 where ``prompt_ids`` holds a real token.
        max_new_tokens: T, the length limit of a completion.
        vocab_size: the size of the action space.
        eos_ids: the token ids that end an episode (terminated).
        pad_id: the id written where there is no token.
        rewards: the reward pipeline.
        chat_template: whether string prompts are wrapped in the tokenizer's chat template.
        templated: the prompts rendered from conversations, which :meth:`encode` never wraps again.
        context_length: the most tokens the model takes (prompt and completion), where known; prompts
            are cut to it less ``max_new_tokens`` (see :attr:`prompt_limit`).
        options: :meth:`build`'s arguments as given (but ``plugin_manager``): checkpoints record the run's
            definition (the prompts' source, the reward spec as written) from them.
        columns: the prompts' other dataset columns by name, one value per prompt (see
            :func:`textenv.prompts.load_prompt_rows`); reward functions get them as keyword arguments.
    """

    model_name: str | None
    tokenizer: Any
    prompts: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    max_new_tokens: int
    vocab_size: int
    eos_ids: list[int]
    pad_id: int
    rewards: RewardPipeline
    chat_template: bool
    templated: frozenset[str] = field(default_factory=frozenset)
    context_length: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        model: str | None = DEFAULT_MODEL,
        tokenizer: Any = None,
        prompts: str | Sequence[str | Conversation] | Any = DEFAULT_PROMPTS,
        max_new_tokens: int = 32,
        max_prompt_tokens: int | None = None,
        reward: Any = DEFAULT_REWARD,
        reward_timeout: float | None = None,
        chat_template: bool = False,
        eos_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
        plugin_manager: Any = None,
    ) -> TextTask:
        """Build a task from the env's options.

        Args:
            model: local path, hub id or ``"smollm2-135m"``; its tokenizer is used
                unless ``tokenizer`` is given.
            tokenizer: a ready tokenizer object (overrides ``model`` for tokenizing).
            prompts: a list of strings or of conversations (TRL's ``[{"role": "user",
                "content": "..."}]``, rendered with the chat template), a ``.txt``/``.jsonl``
                file, a prompt-set name, a ``datasets.Dataset`` with a ``prompt`` column, or a list of
                rows (``{"prompt": ..., "solution": ...}``). A dataset's other columns (a JSONL record's or
                a row's other keys) reach reward functions as keyword arguments, as in TRL.
            max_new_tokens: the completion length limit (truncated past it).
            max_prompt_tokens: the prompt width P; by default the longest prompt's, at most the
                model's context length less ``max_new_tokens`` (the context read from the model's
                config or the tokenizer's ``model_max_length``: :func:`textenv.models.context_length`).
                Longer prompts keep their last P tokens, with one warning that says how many were cut;
                a P past the context is refused.
            reward: the reward spec (``"sentiment + 0.5*length"``, a dict or a list), or
                reward functions as TRL takes them (``fn`` or ``[fn, "sentiment"]``); by default
                :data:`DEFAULT_REWARD`, the one ``textenv train`` optimizes.
            reward_timeout: seconds each reward source may take per call, for the terms that set no
                ``timeout=`` of their own; None: ``$TEXTENV_REWARD_TIMEOUT`` if set, else no limit
                (see :class:`textenv.rewards.RewardPipeline`).
            chat_template: wrap each string prompt as a user turn of the tokenizer's chat template.
            eos_token_ids: the ids that end an episode; the tokenizer's EOS by default.
            vocab_size: the action-space size; ``len(tokenizer)`` by default.
            plugin_manager: where reward sources and prompt sets are looked up.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be at least 1, got {max_prompt_tokens}")
        if tokenizer is None:
            if model is None:
                raise ValueError("give model= (a name or path) or tokenizer=")
            tokenizer = load_tokenizer(model)
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"chat_template=True needs a tokenizer with a chat template; {type(tokenizer).__name__} "
                             "has none")
        context = context_length(model, tokenizer)
        if context is not None and context - max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context "
                             f"of {context} tokens")
        if context is not None and max_prompt_tokens is not None and max_prompt_tokens + max_new_tokens > context:
            raise ValueError(f"max_prompt_tokens={max_prompt_tokens} + max_new_tokens={max_new_tokens} is past the "
                             f"model's context of {context} tokens; give max_prompt_tokens <= "
                             f"{context - max_new_tokens}")
        items, columns = load_prompt_rows(prompts, plugin_manager)
        texts = render_prompts(items, tokenizer)
        rewards = RewardPipeline.from_spec(reward, plugin_manager, timeout=reward_timeout)
        eos = list(eos_token_ids) if eos_token_ids is not None else [tokenizer.eos_token_id]
        if any(e is None for e in eos):
            raise ValueError("the tokenizer has no EOS token: give eos_token_ids=")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        task = cls(
            model_name=model,
            tokenizer=tokenizer,
            prompts=texts,
            prompt_ids=torch.empty(0, dtype=torch.long),
            prompt_mask=torch.empty(0, dtype=torch.long),
            max_new_tokens=max_new_tokens,
            vocab_size=vocab_size or len(tokenizer),
            eos_ids=eos,
            pad_id=pad_id,
            rewards=rewards,
            chat_template=chat_template,
            templated=frozenset(t for t, item in zip(texts, items) if not isinstance(item, str)),
            context_length=context,
            columns=columns,
            options=dict(model=model, tokenizer=tokenizer, prompts=prompts, max_new_tokens=max_new_tokens,
                         max_prompt_tokens=max_prompt_tokens, reward=reward, reward_timeout=reward_timeout,
                         chat_template=chat_template, eos_token_ids=eos_token_ids, vocab_size=vocab_size),
        )
        task.prompt_ids, task.prompt_mask = task.encode(texts, width=max_prompt_tokens)
        return task

    def columns_for(self, prompts: Sequence[str]) -> dict[str, list]:
        """The dataset columns of each prompt, found by its text; None in every column for a text not in the set.

        Prompts of the same text share the first one's columns.
        """
        if not self.columns:
            return {}
        rows = [self._row_of_text.get(text) for text in prompts]
        return {name: [None if i is None else values[i] for i in rows] for name, values in self.columns.items()}

    @functools.cached_property
    def _row_of_text(self) -> dict[str, int]:
        """The first prompt index of each prompt text."""
        index: dict[str, int] = {}
        for i, text in enumerate(self.prompts):
            index.setdefault(text, i)
        return index

    @property
    def prompt_width(self) -> int:
        """P, the number of prompt positions in an observation."""
        return self.prompt_ids.shape[1]

    @property
    def prompt_limit(self) -> int | None:
        """The most prompt tokens the model's context leaves room for (context less T), or None when unknown."""
        return None if self.context_length is None else self.context_length - self.max_new_tokens

    @property
    def seq_len(self) -> int:
        """L = P + T, the width of an observation."""
        return self.prompt_width + self.max_new_tokens

    def encode(self, texts: Sequence[str], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize prompts into a left-padded batch.

        A prompt longer than the width keeps its last ``width`` tokens, and one warning says how
        many were cut. Only a prompt's end is tokenized (:func:`tail_token_ids`), so a megabyte
        of text costs no more than the tokens kept.

        Args:
            texts: the prompts.
            width: the padded width; this task's P by default (the longest prompt, at most
                :attr:`prompt_limit`, when building the bank).

        Returns:
            ids (n, width) and mask (n, width), both int64.
        """
        if self.chat_template:
            texts = [
                t if t in self.templated else self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
                )
                for t in texts
            ]
        bank = bool(self.prompt_ids.numel())
        limit = width or (self.prompt_width if bank else self.prompt_limit)
        encoded, was_cut = tail_token_ids(self.tokenizer, list(texts), limit)
        for i, ids in enumerate(encoded):
            if not ids:
                shown = texts[i] if len(texts[i]) <= 60 else texts[i][:57] + "..."
                raise PromptError(f"prompt #{i} {shown!r} is empty after tokenization")
        cut = sum(was_cut)
        if width is None:
            width = self.prompt_width if bank else max(map(len, encoded))
        if cut:
            why = "" if limit != self.prompt_limit else (
                f" (the model's context of {self.context_length} tokens less max_new_tokens={self.max_new_tokens})"
            )
            warnings.warn(
                f"{cut} prompt(s) longer than {width} tokens keep only their last {width} tokens{why}",
                stacklevel=3,
            )
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, tokens in enumerate(encoded):
            tokens = tokens[-width:]
            ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens) :] = 1
        return ids, mask

    def observation_space(self) -> spaces.Dict:
        """The single-env observation space: padded token ids and their mask, (L,) each."""
        return spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, (self.seq_len,), dtype=np.int64),
                "attention_mask": spaces.Box(0, 1, (self.seq_len,), dtype=np.int64),
            }
        )

    def action_space(self) -> spaces.Discrete:
        """One action per token of the vocabulary."""
        return spaces.Discrete(self.vocab_size)


TAIL_CHARS_PER_TOKEN = 4
"""Characters taken per wanted token in :func:`tail_token_ids`' first try: enough for most tokenizers' texts."""

TAIL_MARGIN = 16
"""Extra tokens :func:`tail_token_ids` tokenizes before the kept ones: the cut may split a word, and only the
tokens of that first word can differ from the whole text's tokenization."""


def tail_token_ids(tokenizer: Any, texts: list[str], limit: int | None) -> tuple[list[list[int]], list[bool]]:
    """The last ``limit`` token ids of each text, tokenizing only as much of its end as that takes.

    Texts of at most ``TAIL_CHARS_PER_TOKEN * (limit + TAIL_MARGIN)`` characters are tokenized whole
    (exactly), in one batch. A longer one is tokenized from a tail of that many characters, grown
    fourfold until it yields ``limit + TAIL_MARGIN`` tokens, of which the last ``limit`` are kept: a
    1 MB line costs about the tokens kept, not a megabyte's worth.

    Args:
        tokenizer: a transformers tokenizer.
        texts: the prompts.
        limit: the most tokens to keep; None keeps every token.

    Returns:
        Each text's ids (at most ``limit``) and whether it had more tokens than ``limit``.
    """

    def tokenize(pieces: list[str]) -> list[list[int]]:
        return tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []

    if limit is None:
        return tokenize(texts), [False] * len(texts)
    first = TAIL_CHARS_PER_TOKEN * (limit + TAIL_MARGIN)
    short = [i for i, text in enumerate(texts) if len(text) <= first]
    result: list[list[int]] = [[] for _ in texts]
    for i, ids in zip(short, tokenize([texts[i] for i in short])):
        result[i] = ids
    for i in sorted(set(range(len(texts))) - set(short)):
        text, chars = texts[i], first
        while True:
            ids = tokenize([text[-chars:] if chars < len(text) else text])[0]
            if len(ids) >= limit + TAIL_MARGIN or chars >= len(text):
                break
            chars *= 4
        result[i] = ids
    return [ids[-limit:] for ids in result], [len(ids) > limit for ids in result]
