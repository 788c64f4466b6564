"""Preference data: pairs, K-wise rankings expanded to pairs, and Elo ratings from comparisons.

Accepted records (JSONL lines, or the rows of any iterable of mappings such as a
``datasets.Dataset``):

* a pair, the format TRL and ``datasets`` users already have::

    {"prompt": "The movie was", "chosen": " great.", "rejected": " dull.", "margin": 0.5}

  (``prompt`` may be missing or empty; ``margin`` is optional);
* a K-wise ranking: ``ranking`` lists indices into ``completions``, best first::

    {"prompt": "Hi", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}

  means c > a > b and expands to the three pairs (c, a), (c, b), (a, b).

A pair whose chosen and rejected texts are identical carries no preference: it is
skipped and counted (:attr:`PreferenceData.skipped_identical`).
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ELO_SCALE = 400.0
"""Elo points per factor of 10 in the odds of winning."""


class PreferenceDataError(ValueError):
    """A preference file or dataset cannot be read; the message says where (``PATH:LINE``)."""


@dataclass(frozen=True)
class PreferencePair:
    """One human judgement: ``chosen`` is preferred to ``rejected`` as a reply to ``prompt``.

    Attributes:
        prompt: the context both completions answer (may be empty).
        chosen: the preferred completion.
        rejected: the other completion.
        margin: how much better ``chosen`` is, in reward units; the Bradley-Terry loss
            asks for ``r_chosen - r_rejected > margin``.
    """

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0


@dataclass
class PreferenceData:
    """Pairs read from a source, with what was dropped on the way.

    Attributes:
        pairs: the usable pairs, in source order.
        source: where they came from (a path or ``"dataset"``), for messages.
        records: records read (a K-wise ranking counts once).
        skipped_identical: pairs dropped because chosen == rejected.
    """

    pairs: list[PreferencePair] = field(default_factory=list)
    source: str = "dataset"
    records: int = 0
    skipped_identical: int = 0

    def summary(self) -> str:
        """One line: how many pairs from how many records, and what was skipped."""
        text = f"{len(self.pairs)} preference pairs from {self.records} records in {self.source}"
        if self.skipped_identical:
            text += f" ({self.skipped_identical} skipped: chosen identical to rejected)"
        return text


def load_preferences(source: str | Path | Iterable[Mapping[str, Any]]) -> list[PreferencePair]:
    """Read preference pairs from a JSONL file or an iterable of mappings.

    Pairs whose chosen and rejected texts are identical are skipped with one warning
    that gives their count (use :func:`read_preferences` to get the count itself).

    Args:
        source: a path to a ``.jsonl`` file, or rows (a list of dicts, a ``datasets.Dataset``).

    Returns:
        The pairs, K-wise rankings expanded.

    Raises:
        PreferenceDataError: a malformed line or row (``PATH:LINE: ...``), a missing or
            mistyped field, or no usable pair at all.
    """
    data = read_preferences(source)
    if data.skipped_identical:
        warnings.warn(data.summary(), stacklevel=2)
    return data.pairs


def read_preferences(source: str | Path | Iterable[Mapping[str, Any]]) -> PreferenceData:
    """Like :func:`load_preferences`, but returns the counts too (:class:`PreferenceData`)."""
    if isinstance(source, (str, Path)):
        data = PreferenceData(source=str(source))
        rows = _jsonl_rows(Path(source))
    elif isinstance(source, Iterable) and not isinstance(source, Mapping):
        data = PreferenceData(source="dataset")
        rows = ((f"dataset row {i}", row) for i, row in enumerate(source))
    else:
        split_hint = " (a DatasetDict? pass one split, e.g. ds['train'])"
        hint = split_hint if isinstance(source, Mapping) else ""
        raise PreferenceDataError(
            "preferences come from a JSONL path or an iterable of mappings, "
            f"got {type(source).__name__}{hint}"
        )
    for where, row in rows:
        data.records += 1
        pairs = [row] if isinstance(row, PreferencePair) else _pairs_from_record(where, row)
        for pair in pairs:
            if pair.chosen == pair.rejected:
                data.skipped_identical += 1
            else:
                data.pairs.append(pair)
    if not data.pairs:
        detail = (
            f"all {data.skipped_identical} pairs have chosen identical to rejected"
            if data.skipped_identical
            else f"{data.records} records"
        )
        raise PreferenceDataError(f"{data.source}: no usable preference pairs ({detail})")
    return data


def _jsonl_rows(path: Path) -> Iterable[tuple[str, Any]]:
    """Yield (``PATH:LINE``, parsed object) for each non-blank line.

    Raises:
        PreferenceDataError: no such file, a line that is not UTF-8 or not JSON (``PATH:LINE: ...``).
    """
    if not path.is_file():
        raise PreferenceDataError(f"{path}: no such file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise PreferenceDataError(
                    f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise PreferenceDataError(
                    f"{where}: not valid JSON: {exc.msg} (column {exc.colno})"
                ) from None


def _pairs_from_record(where: str, row: Any) -> list[PreferencePair]:
    if not isinstance(row, Mapping):
        raise PreferenceDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt") or ""
    if not isinstance(prompt, str):
        raise PreferenceDataError(
            f"{where}: 'prompt' must be a string, got {type(prompt).__name__}"
        )
    if "completions" in row or "ranking" in row:
        completions = _field(where, row, "completions", list)
        ranking = _field(where, row, "ranking", list)
        try:
            return ranking_to_pairs(prompt, completions, ranking)
        except (ValueError, TypeError) as exc:
            raise PreferenceDataError(f"{where}: {exc}") from None
    chosen = _field(where, row, "chosen", str)
    rejected = _field(where, row, "rejected", str)
    margin = row.get("margin", 0.0)
    if margin is None:
        margin = 0.0
    if (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float))
        or not math.isfinite(margin)
    ):
        raise PreferenceDataError(f"{where}: 'margin' must be a finite number, got {margin!r}")
    return [PreferencePair(prompt, chosen, rejected, float(margin))]


def _field(where: str, row: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in row or row[name] is None:
        present = ", ".join(repr(k) for k in row) or "none"
        raise PreferenceDataError(
            f"{where}: missing field {name!r} (fields present: {present}); expected "
            "prompt/chosen/rejected or prompt/completions/ranking"
        )
    value = row[name]
    if not isinstance(value, kind):
        raise PreferenceDataError(
            f"{where}: {name!r} must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


# ------------------------------------------------------------------------- rankings


def ranking_to_pairs(
    prompt: str, completions: Sequence[str], ranking: Sequence[int]
) -> list[PreferencePair]:
    """Expand a K-wise ranking into its K(K-1)/2 pairs (InstructGPT's way).

    Args:
        prompt: the shared prompt.
        completions: the K completions.
        ranking: indices into ``completions``, best first (a permutation of ``range(K)``).

    Returns:
        One pair per (better, worse) combination, better ones first; identical texts
        are kept here (loaders skip and count them).

    Raises:
        ValueError: ``ranking`` is not a permutation of the completion indices.
        TypeError: a completion is not a string.
    """
    k = len(completions)
    if k < 2:
        raise ValueError(f"a ranking needs at least 2 completions, got {k}")
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise TypeError(f"completion {i} must be a string, got {type(text).__name__}")
    if not all(type(i) is int for i in ranking) or sorted(ranking) != list(range(k)):
        raise ValueError(
            f"'ranking' must list each of the {k} completion indices 0..{k - 1} once, "
            f"best first; got {list(ranking)}"
        )
    ordered = [completions[i] for i in ranking]
    return [
        PreferencePair(prompt, better, worse)
        for better, worse in itertools.combinations(ordered, 2)
    ]


# ----------------------------------------------------------------------------- Elo


def elo_ratings(
    comparisons: Iterable[Sequence[Any]],
    *,
    k_factor: float = 32.0,
    initial: float = 1000.0,
    passes: int = 1,
) -> dict[Hashable, float]:
    """Elo ratings from pairwise comparisons, updated one game at a time.

    Each comparison is ``(winner, loser)``, or ``(a, b, score)`` with ``score`` a's
    result: 1 a won, 0.5 a draw, 0 b won. The expected score of a against b is
    ``1 / (1 + 10 ** ((R_b - R_a) / 400))``, and each game moves both ratings by
    ``k_factor * (score - expected)`` in opposite directions, so their sum stays
    ``initial`` times the number of items.

    Args:
        comparisons: the games, in the order they were played.
        k_factor: the largest change one game can make.
        initial: every item's rating before its first game.
        passes: replay the games this many times (more passes lessen the weight of
            the order and move ratings towards the Bradley-Terry fit).

    Returns:
        The rating of every item that played, by item.

    Raises:
        ValueError: a comparison is not a 2- or 3-tuple, or a score is outside [0, 1].
    """
    games = [_game(c) for c in comparisons]
    ratings: dict[Hashable, float] = {}
    for _ in range(passes):
        for a, b, score in games:
            ra, rb = ratings.setdefault(a, initial), ratings.setdefault(b, initial)
            expected = 1.0 / (1.0 + 10.0 ** ((rb - ra) / ELO_SCALE))
            delta = k_factor * (score - expected)
            ratings[a], ratings[b] = ra + delta, rb - delta
    return ratings


def _game(comparison: Sequence[Any]) -> tuple[Hashable, Hashable, float]:
    if len(comparison) == 2:
        return comparison[0], comparison[1], 1.0
    if len(comparison) == 3 and 0.0 <= float(comparison[2]) <= 1.0:
        return comparison[0], comparison[1], float(comparison[2])
    raise ValueError(
        f"a comparison is (winner, loser) or (a, b, score in [0, 1]); got {comparison!r}"
    )


def elo_to_rewards(ratings: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Turn Elo ratings into per-item scalar rewards on the Bradley-Terry scale.

    Elo's win probability ``1 / (1 + 10 ** (-(R_a - R_b) / 400))`` equals
    ``sigmoid(r_a - r_b)`` for ``r = R * ln(10) / 400``: these are the rewards a
    perfect Bradley-Terry reward model would give. They are centred on their mean.

    Returns:
        Each item's reward (0 for an average item).
    """
    if not ratings:
        return {}
    mean = sum(ratings.values()) / len(ratings)
    return {item: (r - mean) * math.log(10.0) / ELO_SCALE for item, r in ratings.items()}


def pairs_from_ratings(
    prompt: str,
    ratings: Mapping[str, float],
    *,
    with_margin: bool = False,
    min_gap: float = 0.0,
) -> list[PreferencePair]:
    """Training pairs from rated completions of one prompt: each higher-rated over each lower.

    Args:
        prompt: the prompt all completions answer.
        ratings: Elo ratings (or any scores) by completion text.
        with_margin: set each pair's margin to the reward gap :func:`elo_to_rewards`
            implies, so the model learns how much better, not only which.
        min_gap: skip pairs whose ratings differ by no more than this (near-ties).

    Returns:
        The pairs, best completion's pairs first.
    """
    rewards = elo_to_rewards(ratings)
    ordered = sorted(ratings, key=ratings.__getitem__, reverse=True)
    pairs = []
    for better, worse in itertools.combinations(ordered, 2):
        if ratings[better] - ratings[worse] <= min_gap:
            continue
        margin = rewards[better] - rewards[worse] if with_margin else 0.0
        pairs.append(PreferencePair(prompt, better, worse, margin))
    return pairs
