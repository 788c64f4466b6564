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
        include: words (or regexes) to reward; a string of words may list several, separated by
            ``|``. With ``regex`` a string is one pattern, where ``|`` is the regex alternation.
        exclude: words (or regexes) to penalize, given like ``include``.
        regex: treat the entries as regular expressions; otherwise they match whole words (not
            inside a longer word; ``C++`` and ``:)`` match too).
        case_sensitive: match case exactly.
    """
    flags = 0 if case_sensitive else re.IGNORECASE
    good = [_compile(p, regex, flags) for p in _as_list(include, regex)]
    bad = [_compile(p, regex, flags) for p in _as_list(exclude, regex)]
    if not good and not bad:
        raise ValueError("keyword needs include=... or exclude=...")
    return [
        float(sum(bool(p.search(t)) for p in good) - sum(bool(p.search(t)) for p in bad))
        for t in completions
    ]


def _as_list(patterns: str | list[str], regex: bool) -> list[str]:
    """A string of words splits at ``|``; a regex string is one pattern (its ``|`` is alternation)."""
    if isinstance(patterns, str):
        if regex:
            return [patterns] if patterns else []
        return [p for p in patterns.split("|") if p]
    return list(patterns)


def _compile(pattern: str, regex: bool, flags: int) -> re.Pattern:
    # (?<!\w) and (?!\w), not \b: \b needs a word character inside, so "C++" or ":)" would never match
    return re.compile(pattern if regex else rf"(?<!\w){re.escape(pattern)}(?!\w)", flags)


@hookimpl
def textenv_reward_sources():
    return [RewardSource("keyword", keyword)]
