"""Prompt sources: a list of strings, a text or JSONL file, a named prompt set, or a ``datasets.Dataset``.

A prompt is a string or, as TRL's conversational datasets hold them, a conversation: a
list of ``{"role": ..., "content": ...}`` messages, which :func:`render_prompts` turns
into text with the tokenizer's chat template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Conversation = list[dict[str, Any]]
"""A conversational prompt: ``[{"role": "user", "content": "..."}, ...]``."""


class PromptError(ValueError):
    """Prompts could not be read; the message gives the file and line, or the bad item."""


def load_prompts(source: Any, plugin_manager=None) -> list[str | Conversation]:
    """Read prompts from any supported source.

    Args:
        source: a list of prompts (strings or conversations); a ``.txt`` file (one prompt
            per non-empty line); a ``.jsonl`` file (one object with a ``"prompt"`` field, or
            one JSON string, per line); the name of a prompt set from a plugin
            (``"movie-reviews"``); or a ``datasets.Dataset`` with a ``prompt`` column.

    Returns:
        The prompts; conversations stay message lists (see :func:`render_prompts`).

    Raises:
        PromptError: an unknown name, a missing or malformed file, a dataset without a
            ``prompt`` column, a malformed prompt, or no prompts at all.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.suffix in (".txt", ".jsonl") or path.exists():
            prompts = _read_file(path)
        else:
            prompts = _named_set(str(source), plugin_manager)
    else:
        items = _dataset_prompts(source)
        prompts = list(source) if items is None else items
        for i, prompt in enumerate(prompts):
            problem = prompt_problem(prompt)
            if problem:
                raise PromptError(f"prompt #{i} {problem}")
    if not prompts:
        raise PromptError(f"no prompts in {_describe(source)}")
    return prompts


def render_prompts(prompts: Sequence[str | Conversation], tokenizer: Any) -> list[str]:
    """The text of each prompt: strings as they are, conversations through the chat template.

    A conversation is rendered as TRL does it, with the generation prompt of the
    assistant's turn appended: ``apply_chat_template(messages, add_generation_prompt=True,
    tokenize=False)``.

    Raises:
        PromptError: a conversation, and the tokenizer has no chat template.
    """
    conversations = [p for p in prompts if not isinstance(p, str)]
    if conversations and not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            f"prompts: {len(conversations)} conversational prompt(s) need a chat template, and the tokenizer "
            f"({type(tokenizer).__name__}) has none; give string prompts or a chat model's tokenizer"
        )
    return [
        p if isinstance(p, str) else tokenizer.apply_chat_template(
            [dict(m) for m in p], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]


def _dataset_prompts(source: Any) -> list | None:
    """The ``prompt`` column of a ``datasets.Dataset``; None for anything else.

    ``datasets`` is imported only when the source comes from it, so the core does not need it.

    Raises:
        PromptError: a DatasetDict (no split picked) or a dataset without a ``prompt`` column.
    """
    if not type(source).__module__.startswith("datasets."):
        return None
    import datasets

    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise PromptError(f"prompts: a DatasetDict; pick a split, e.g. dataset['train'] (splits: {', '.join(source)})")
    if not isinstance(source, datasets.Dataset):
        return None
    if "prompt" not in source.column_names:
        raise PromptError(
            f"prompts: the dataset has no 'prompt' column; its columns are: {', '.join(source.column_names)}"
        )
    return list(source["prompt"])


def prompt_problem(prompt: Any) -> str | None:
    """What is wrong with one prompt (the text after "prompt #i"), or None for a string or a conversation."""
    if isinstance(prompt, str):
        return None
    if not isinstance(prompt, Sequence) or isinstance(prompt, bytes) or not prompt:
        return f"is {type(prompt).__name__}, not a string or a list of messages: {prompt!r}"
    for j, message in enumerate(prompt):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str) and "content" in message):
            return f"message #{j}: expected {{'role': ..., 'content': ...}}, got {message!r}"
    return None


def _describe(source: Any) -> str:
    return repr(source) if isinstance(source, (str, Path, list, tuple)) else type(source).__name__


def _named_set(name: str, plugin_manager) -> list[str]:
    from textenv.plugin_manager import get_plugin_manager

    sets = (plugin_manager or get_plugin_manager()).prompt_sets()
    if name not in sets:
        raise PromptError(
            f"{name!r} is neither a file nor a prompt set; prompt sets: {', '.join(sorted(sets))}"
        )
    return list(sets[name])


def _read_file(path: Path) -> list[str | Conversation]:
    if not path.is_file():
        raise PromptError(f"{path}: no such prompt file")
    lines = _read_lines(path)
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        prompt = record.get("prompt") if isinstance(record, dict) else record
        if not isinstance(prompt, (str, list)) or prompt_problem(prompt):
            raise PromptError(
                f'{path}:{lineno}: expected {{"prompt": "..."}} (a string or a list of messages) or a JSON string, '
                f"got {line.strip()[:80]}"
            )
        prompts.append(prompt)
    return prompts


def _read_lines(path: Path) -> list[str]:
    """The file's lines, split on ``\\n`` only (a raw U+2028 or form feed stays inside its line).

    A UTF-8 byte-order mark is dropped and a trailing ``\\r`` is stripped from each line.

    Raises:
        PromptError: the file is not valid UTF-8; the message gives the path and line.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = exc.object.count(b"\n", 0, exc.start) + 1  # exc.object lacks the BOM, if any
        raise PromptError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason})") from None
    return [line.removesuffix("\r") for line in text.split("\n")]
