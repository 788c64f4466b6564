"""Prompt sources: a list of strings, a text or JSONL file, a named prompt set, or a ``datasets.Dataset``.

A prompt is a string or, as TRL's conversational datasets hold them, a conversation: a
list of ``{"role": ..., "content": ...}`` messages, which :func:`render_prompts` turns
into text with the tokenizer's chat template.

Rows with more than a prompt (a dataset's other columns, a JSONL record's other fields, a list of
``{"prompt": ..., "solution": ...}`` dicts) keep those columns: :func:`load_prompt_rows` returns them,
and the reward pipeline hands them to reward functions as keyword arguments, as TRL's GRPOTrainer does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Conversation = list[dict[str, Any]]
"""A conversational prompt: ``[{"role": "user", "content": "..."}, ...]``."""


DISPLAY_CHARS = 200
"""The most characters of a prompt printed to a terminal (``textenv demo``, a person labelling, human rendering)."""


def shortened(text: str, limit: int = DISPLAY_CHARS) -> str:
    """``text`` as a terminal shows it: whole, or its first ``limit`` characters and how long it was (a megabyte
    prompt is not printed whole)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class PromptError(ValueError):
    """Prompts could not be read; the message gives the file and line, or the bad item."""


NOT_COLUMNS = ("prompt", "completion", "completion_ids")
"""Dataset columns that are not handed to reward functions (TRL's GRPOTrainer leaves the same out)."""

RESERVED_COLUMNS = ("prompts", "completions", "completion_ids", "terminated", "tokens")
"""The arguments every reward source is given (:data:`textenv.rewards.CONTEXT_ARGS`): no column may take their
names."""


def load_prompts(source: Any, plugin_manager=None) -> list[str | Conversation]:
    """Read prompts from any supported source.

    Args:
        source: a list of prompts (strings or conversations, or rows: dicts with a ``"prompt"`` key);
            a ``.txt`` file (one prompt per non-empty line); a ``.jsonl`` file (one object with a
            ``"prompt"`` field, or one JSON string, per line); the name of a prompt set from a plugin
            (``"movie-reviews"``); or a ``datasets.Dataset`` with a ``prompt`` column.

    Returns:
        The prompts; conversations stay message lists (see :func:`render_prompts`).

    Raises:
        PromptError: an unknown name, a missing or malformed file, a dataset without a
            ``prompt`` column, an ``IterableDataset``, a malformed prompt, or no prompts at all.
    """
    return load_prompt_rows(source, plugin_manager)[0]


def load_prompt_rows(source: Any, plugin_manager=None) -> tuple[list[str | Conversation], dict[str, list]]:
    """Read prompts, and the other columns of their rows, from any source :func:`load_prompts` reads.

    Returns:
        The prompts, and each other column by name, one value per prompt (None where a row lacks it):
        a dataset's columns but :data:`NOT_COLUMNS`, a JSONL record's or a dict row's other keys; no
        columns for strings, text files and prompt sets.

    Raises:
        PromptError: as :func:`load_prompts`, or a column named like a reward argument
            (:data:`RESERVED_COLUMNS`).
    """
    columns: dict[str, list] = {}
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.suffix in (".txt", ".jsonl") or path.exists():
            prompts, columns = _read_file(path)
        else:
            prompts = _named_set(str(source), plugin_manager)
    else:
        dataset = _dataset_rows(source)
        prompts, columns = dataset if dataset is not None else _rows(list(source))
        for i, prompt in enumerate(prompts):
            problem = prompt_problem(prompt)
            if problem:
                raise PromptError(f"prompt #{i} {problem}")
    if not prompts:
        raise PromptError(f"no prompts in {_describe(source)}")
    for name in columns:
        if name in RESERVED_COLUMNS:
            raise PromptError(f"prompts: the column {name!r} has the name of an argument every reward source is "
                              f"given ({', '.join(RESERVED_COLUMNS)}); rename it")
    return prompts, columns


def _rows(items: list) -> tuple[list, dict[str, list]]:
    """Prompts and columns from a list whose items are prompts or ``{"prompt": ..., ...}`` rows (or both)."""
    prompts, names = [], {}
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if "prompt" not in item:
                raise PromptError(f"prompt #{i}: a row needs a 'prompt' key, got the keys: {', '.join(map(str, item))}")
            names.update(dict.fromkeys(k for k in item if k not in NOT_COLUMNS))
            prompts.append(item["prompt"])
        else:
            prompts.append(item)
    columns = {name: [item.get(name) if isinstance(item, Mapping) else None for item in items] for name in names}
    return prompts, columns


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


def _dataset_rows(source: Any) -> tuple[list, dict[str, list]] | None:
    """The ``prompt`` column of a ``datasets.Dataset`` and its other columns; None for anything else.

    ``datasets`` is imported only when the source comes from it, so the core does not need it.

    Raises:
        PromptError: a DatasetDict (no split picked), an IterableDataset (a stream has no end to read to),
            or a dataset without a ``prompt`` column.
    """
    if not type(source).__module__.startswith("datasets."):
        return None
    import datasets

    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise PromptError(f"prompts: a DatasetDict; pick a split, e.g. dataset['train'] (splits: {', '.join(source)})")
    if isinstance(source, datasets.IterableDataset):
        raise PromptError("prompts: an IterableDataset is read as a stream, never whole; take a finite part as a "
                          "list of rows: prompts=list(dataset.take(N))")
    if not isinstance(source, datasets.Dataset):
        return None
    if "prompt" not in source.column_names:
        raise PromptError(
            f"prompts: the dataset has no 'prompt' column; its columns are: {', '.join(source.column_names)}"
        )
    columns = {name: list(source[name]) for name in source.column_names if name not in NOT_COLUMNS}
    return list(source["prompt"]), columns


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


def _read_file(path: Path) -> tuple[list[str | Conversation], dict[str, list]]:
    """The prompts of a text or JSONL file, and the JSONL records' other fields as columns."""
    if path.is_dir():
        raise PromptError(f"{path}: is a directory; expected a prompt file (.txt, one prompt a line, or .jsonl)")
    if not path.is_file():
        raise PromptError(f"{path}: no such prompt file")
    lines = _read_lines(path)
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()], {}
    records = []
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
        records.append(record)
    return _rows(records)


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
