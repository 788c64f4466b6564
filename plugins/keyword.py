"""``keyword``: reward words or patterns to include, penalize those to exclude."""

from __future__ import annotations

import re

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardSource


def keyword(
    completions: list[str],
    *,
    include: str | list[str] = (),
    exclude: str | list[str] = (),
    regex: bool = False,
    case_sensitive: bool = False,
) -> list[float]:
    """+1 for each include word/regex present, -1 for each exclude one present.

    Args:
        completions: the texts to score.
        include: words (or regexes) to reward; a string may list several, separated by ``|``.
        exclude: words (or regexes) to penalize.
        regex: treat the entries as regular expressions; otherwise they match whole words.
        case_sensitive: match case exactly.
    """
    flags = 0 if case_sensitive else re.IGNORECASE
    good = [_compile(p, regex, flags) for p in _as_list(include)]
    bad = [_compile(p, regex, flags) for p in _as_list(exclude)]
    if not good and not bad:
        raise ValueError("keyword needs include=... or exclude=...")
    return [
        float(sum(bool(p.search(t)) for p in good) - sum(bool(p.search(t)) for p in bad))
        for t in completions
    ]


def _as_list(patterns: str | list[str]) -> list[str]:
    if isinstance(patterns, str):
        return [p for p in patterns.split("|") if p] if patterns else []
    return list(patterns)


def _compile(pattern: str, regex: bool, flags: int) -> re.Pattern:
    return re.compile(pattern if regex else rf"\b{re.escape(pattern)}\b", flags)


@hookimpl
def textenv_reward_sources():
    return [RewardSource("keyword", keyword)]
