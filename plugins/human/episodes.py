"""Episode-level feedback: rate a whole completion, compare two (A/B), or pick the best (and worst) of K.

The A/B pairs are chosen where a reward-model ensemble disagrees most (Christiano
et al.): for completions i and j of the same prompt with ensemble means μ and
standard deviations σ, the spread of the members' score difference is about
``σ_ij = sqrt(σ_i² + σ_j²)`` (members' errors taken as independent); the pairs with
the largest ``σ_ij`` are asked first, ties broken by the smaller ``|μ_i − μ_j|``. A
single model (σ = 0 everywhere) falls back to the closest means: the pair whose
preference it is least sure of. Each answer is committed before the next question, and
only keys typed while the question is on screen answer it (earlier ones are dropped, and
the person is told).

A best-of-K question (Ziegler et al.'s 4-way choice) shows K completions of one prompt,
numbered one under another; the person presses the best one's number, then, optionally,
the worst one's. One answer gives K−1 preference pairs, 2K−3 with a worst, for about the
reading time of K ratings.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

import numpy as np

from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.stream import printable
from textenv.plugins.human.terminal import KeyReader
from textenv.prompts import shortened

RATE_HELP = "rate {lo}-{hi} · s skip · q quit · ? help"
COMPARE_HELP = "a: A is better · b: B is better · t tie · s skip · q quit · ? help"
BEST_HELP = "best {lo}-{hi} · s skip · q quit · ? help"
WORST_HELP = "worst {lo}-{hi}, not {best} · Enter or s: no worst · q quit · ? help"
_COMPARE_KEYS = {"a": "a", "b": "b", "t": "tie", "s": "skip",
                 "up": "a", "down": "b",  # A is shown above B
                 "left": "a", "right": "b"}  # the keys of an earlier side-by-side wording
"""Each key the A/B question takes, and the answer it gives."""
_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


def select_pairs(
    mean: np.ndarray, std: np.ndarray, groups: Sequence[int], n_pairs: int | None = None, *, per_group: int = 1
) -> list[tuple[int, int, float]]:
    """The pairs to ask about, where the ensemble disagrees most.

    Args:
        mean: (N,) the ensemble's mean score of each completion.
        std: (N,) the spread of its members' scores.
        groups: (N,) which prompt each completion answers; only same-group pairs are formed.
        n_pairs: how many pairs to return (all qualifying pairs by default).
        per_group: at most this many pairs per prompt.

    Returns:
        ``(i, j, disagreement)`` triples, most disagreed first; disagreement is ``σ_ij``.
    """
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    groups = np.asarray(groups)
    if not (mean.shape == std.shape == groups.shape) or mean.ndim != 1:
        raise ValueError(f"mean, std and groups must be (N,) each, got {mean.shape}, {std.shape}, {groups.shape}")
    candidates = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = int(members[a]), int(members[b])
                spread = float(np.hypot(std[i], std[j]))
                candidates.append((-spread, abs(mean[i] - mean[j]), i, j, g))
    candidates.sort()
    taken: dict[object, int] = {}
    pairs = []
    for neg_spread, _, i, j, g in candidates:
        if taken.get(g, 0) >= per_group:
            continue
        taken[g] = taken.get(g, 0) + 1
        pairs.append((i, j, -neg_spread))
        if n_pairs is not None and len(pairs) >= n_pairs:
            break
    return pairs


def _next_key(reader: KeyReader, allowed: set[str], out: TextIO, help_line: str, *, asked_at: float,
              hints: Mapping[str, str] | None = None) -> str:
    """Wait for one of ``allowed`` (or q); other keys get a hint (``hints``' own, if it has one), ? and h the help.

    Keys read before ``asked_at``, the moment the question was on screen, answer nothing: they
    were typed at an earlier question, or while the model was still generating, about a
    completion the person had not seen. They are dropped and the person is told so. Only q and
    a closed terminal count whenever they came: stopping never attaches a label to anything.
    """
    ignored: list[str] = []
    while True:
        try:
            key = reader.keys.get(timeout=0.0 if ignored else 0.1)
        except queue.Empty:
            key = None
        if ignored and (key is None or key.at >= asked_at or key.name in ("q", "hangup")):
            out.write(f"\n  (ignored {len(ignored)} key{'s' if len(ignored) > 1 else ''} typed before this "
                      f"question was on screen: {' '.join(ignored)})\n  {help_line}: ")
            out.flush()
            ignored = []
        if key is None:
            continue
        if key.name in ("q", "hangup"):
            return key.name
        if key.at < asked_at:
            ignored.append(key.name)
            continue
        if key.name in allowed:
            return key.name
        if key.name in ("?", "h"):
            out.write(f"  ({help_line})\n")
        elif hints and key.name in hints:
            out.write(f"  ({hints[key.name]})\n")
        else:
            out.write(f"  (key {key.name!r} does nothing here; press ? for help)\n")
        out.flush()


def rate_completions(
    store: FeedbackStore,
    session_id: int,
    reader: KeyReader,
    prompts: Sequence[str],
    completions: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    tokens: Sequence[Sequence[str]],
    *,
    scale: int = 5,
    out: TextIO | None = None,
) -> tuple[int, bool]:
    """Ask for a 1..scale rating of each completion; each is committed before the next question.

    Returns:
        (ratings given, whether the person quit).
    """
    out = out or reader.output()
    allowed = {str(k) for k in range(1, scale + 1)} | {"s"}
    help_line = RATE_HELP.format(lo=1, hi=scale)
    given = 0
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        episode_id = store.add_episode(session_id, prompt, completion, completion_ids[i], tokens[i])
        asked_at = time.time()  # before the write: a key read once the question is out is never dropped
        shown = printable(shortened(prompt))
        out.write(f"\n{_DIM}[{i + 1}/{len(completions)}] {shown}{_RESET}{_BOLD}{printable(completion)}{_RESET}\n"
                  f"  {help_line}: ")
        out.flush()
        answer = _next_key(reader, allowed, out, help_line, asked_at=asked_at)
        if answer in ("q", "hangup"):
            out.write("quit\n")
            return given, True
        if answer != "s":
            store.add_rating(session_id, episode_id, int(answer), scale=scale)
            given += 1
        out.write(f"{answer}\n")
        out.flush()
    return given, False


def compare_completions(
    store: FeedbackStore,
    session_id: int,
    reader: KeyReader,
    prompts: Sequence[str],
    completions: Sequence[str],
    pairs: Sequence[tuple[int, int, float]],
    *,
    out: TextIO | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[int, bool]:
    """Ask which of two completions is better, for each pair; each answer is committed at once.

    Each pair is shown in a random order, A above B (no position bias in the data). Besides a and b,
    ↑ and ↓ (and ← and →) answer A and B.

    Returns:
        (answers given, not counting skips; whether the person quit).
    """
    out = out or reader.output()
    rng = rng or np.random.default_rng()
    allowed = set(_COMPARE_KEYS)
    given = 0
    for n, (i, j, disagreement) in enumerate(pairs):
        if rng.random() < 0.5:
            i, j = j, i
        asked_at = time.time()  # before the write: a key read once the question is out is never dropped
        out.write(f"\n{_DIM}[{n + 1}/{len(pairs)}] {printable(shortened(prompts[i]))}{_RESET}\n"
                  f"  {_BOLD}A{_RESET} {printable(completions[i])}\n  {_BOLD}B{_RESET} {printable(completions[j])}\n"
                  f"  {COMPARE_HELP}: ")
        out.flush()
        answer = _next_key(reader, allowed, out, COMPARE_HELP, asked_at=asked_at)
        if answer in ("q", "hangup"):
            out.write("quit\n")
            return given, True
        choice = _COMPARE_KEYS[answer]
        store.add_comparison(session_id, prompts[i], completions[i], completions[j], choice,
                             disagreement=disagreement if np.isfinite(disagreement) else None)
        given += choice != "skip"
        out.write(f"{choice}\n")
        out.flush()
    return given, False


def best_of_completions(
    store: FeedbackStore,
    session_id: int,
    reader: KeyReader,
    questions: Sequence[tuple[str, Sequence[str]]],
    *,
    out: TextIO | None = None,
) -> tuple[int, bool]:
    """Ask for the best (and, optionally, the worst) of K completions of a prompt, question by question.

    The best is committed the moment its key is read, before the worst is asked; the worst,
    when given, is committed the moment its key is read, before the next question: a person
    who stops (q, Ctrl-C, ``kill -9``) after naming the best keeps it.

    Args:
        store: where the answers go.
        session_id: the session they belong to.
        reader: the terminal's keys.
        questions: per question, the prompt and its K (2 to 9) completions, shown in this order as 1..K.
        out: where the questions are written (the reader's terminal by default).

    Returns:
        (questions answered, not counting skips; whether the person quit).
    """
    out = out or reader.output()
    given = 0
    for n, (prompt, completions) in enumerate(questions):
        k = len(completions)
        if not 2 <= k <= 9:
            raise ValueError(f"a best-of-K question shows 2 to 9 completions (one key each), got {k}")
        asked_at = time.time()  # before the write: a key read once the question is out is never dropped
        shown = "".join(f"  {_BOLD}{i + 1}{_RESET} {printable(c)}\n" for i, c in enumerate(completions))
        best_help = BEST_HELP.format(lo=1, hi=k)
        out.write(f"\n{_DIM}[{n + 1}/{len(questions)}] {printable(shortened(prompt))}{_RESET}\n{shown}  {best_help}: ")
        out.flush()
        answer = _next_key(reader, {str(i) for i in range(1, k + 1)} | {"s"}, out, best_help, asked_at=asked_at)
        if answer in ("q", "hangup"):
            out.write("quit\n")
            return given, True
        out.write(f"{answer}\n")
        out.flush()
        if answer == "s":
            continue
        choice = store.add_choice(session_id, prompt, completions, int(answer) - 1)
        given += 1
        # keys still queued came after the best's key: they answer the worst, so the best's asked_at holds
        if k >= 3 and _ask_worst(store, choice, reader, k, int(answer), out, asked_at=asked_at):
            return given, True
    return given, False


def _ask_worst(store: FeedbackStore, choice: int, reader: KeyReader, k: int, best: int, out: TextIO, *,
               asked_at: float) -> bool:
    """Ask for the worst of K (numbered 1..k, ``best`` taken) and commit it; returns whether the person quit."""
    worst_help = WORST_HELP.format(lo=1, hi=k, best=best)
    out.write(f"  {worst_help}: ")
    out.flush()
    allowed = {str(i) for i in range(1, k + 1) if i != best} | {"s", "enter"}
    hints = {str(best): f"{best} is the best; the worst is another one, or Enter for none"}
    answer = _next_key(reader, allowed, out, worst_help, asked_at=asked_at, hints=hints)
    if answer in ("q", "hangup"):
        out.write("quit\n")
        return True
    if answer.isdigit():
        store.set_choice_worst(choice, int(answer) - 1)
    out.write(f"{answer if answer.isdigit() else 'no worst'}\n")
    out.flush()
    return False
