"""Prompt sources: a list of strings, a text or JSONL file, or a named prompt set."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


class PromptError(ValueError):
    """Prompts could not be read; the message gives the file and line, or the bad item."""


def load_prompts(source: str | Path | Sequence[str], plugin_manager=None) -> list[str]:
    """Read prompts from any supported source.

    Args:
        source: a list of strings; a ``.txt`` file (one prompt per non-empty line); a
            ``.jsonl`` file (one object with a ``"prompt"`` field, or one JSON string,
            per line); or the name of a prompt set from a plugin (``"movie-reviews"``).
        plugin_manager: where to look prompt sets up; the process default if None.

    Raises:
        PromptError: an unknown name, a missing or malformed file, or no prompts at all.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.suffix in (".txt", ".jsonl") or path.exists():
            prompts = _read_file(path)
        else:
            prompts = _named_set(str(source), plugin_manager)
    else:
        prompts = list(source)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise PromptError(f"prompt #{i} is {type(prompt).__name__}, not a string: {prompt!r}")
    if not prompts:
        raise PromptError(f"no prompts in {source!r}")
    return prompts


def _named_set(name: str, plugin_manager) -> list[str]:
    from textenv.plugin_manager import get_plugin_manager

    sets = (plugin_manager or get_plugin_manager()).prompt_sets()
    if name not in sets:
        raise PromptError(
            f"{name!r} is neither a file nor a prompt set; prompt sets: {', '.join(sorted(sets))}"
        )
    return list(sets[name])


def _read_file(path: Path) -> list[str]:
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
        if not isinstance(prompt, str):
            raise PromptError(
                f'{path}:{lineno}: expected {{"prompt": "..."}} or a JSON string, got {line.strip()[:80]}'
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
