"""The feedback store: every label a person gives, in SQLite, committed before the next is asked.

One database file holds sessions, what was shown (episodes with their tokens and the
time each token appeared), every keypress, the per-token rewards credited from them,
episode ratings, A/B comparisons and best-of-K choices. Durability: the journal is WAL and
``synchronous=FULL``, so each commit is fsynced into the WAL before the call returns:
a label survives Ctrl-C, ``kill -9`` and a closed terminal (those only need the commit
to have reached the OS, which WAL with ``NORMAL`` already gives) and also a power cut
(which needs the fsync ``FULL`` adds). A person gives at most a few labels a second,
so the fsync per label costs nothing that matters.

The connection may be used from the key-reader thread and the main thread: writes
take a lock, so a keypress is committed the moment it is read.

The store touches only its own files. Each database it creates is marked with
:data:`APPLICATION_ID` (SQLite's ``application_id`` header field, the way file formats
built on SQLite tell themselves apart). Before writing anything, an existing file is
inspected through a read-only connection: an empty database is initialised, one
carrying the mark is opened, one that earlier versions wrote (exactly this schema, no
mark) is marked and opened, and anything else is refused with
:class:`FeedbackStoreError`, its bytes left as they were.
"""

from __future__ import annotations

import json
import numbers
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

SCHEMA_VERSION = 2
"""1: sessions, episodes, keypresses, token_rewards, ratings, comparisons. 2: ``choices`` (best-of-K) added."""

APPLICATION_ID = 0x74784642
"""The mark in a feedback store's SQLite header (``PRAGMA application_id``): ASCII ``txFB``."""

_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    mode TEXT NOT NULL,              -- label-tokens, label-rate, label-compare, label-best, train, ...
    options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    prompt TEXT NOT NULL,
    completion TEXT NOT NULL,
    token_ids TEXT NOT NULL,         -- JSON list of ints
    tokens TEXT NOT NULL,            -- JSON list of the decoded token pieces
    shown_at TEXT,                   -- JSON list: wall time each token appeared
    hidden_at REAL,                  -- wall time the last token stopped being the newest
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keypresses (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    episode_id INTEGER REFERENCES episodes(id),  -- on screen when the key was pressed
    at REAL NOT NULL,                -- wall time (time.time()) of the keypress
    key TEXT NOT NULL,               -- the key as named on screen: up, +, g, down, -, b
    value REAL NOT NULL,             -- +1 good, -1 bad
    strength REAL NOT NULL           -- the strength level in force (1.0 = default)
);
CREATE TABLE IF NOT EXISTS token_rewards (
    episode_id INTEGER NOT NULL REFERENCES episodes(id),
    position INTEGER NOT NULL,
    reward REAL NOT NULL,            -- credited human reward of the token
    mass REAL NOT NULL,              -- summed credit weight the token received
    PRIMARY KEY (episode_id, position)
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    episode_id INTEGER NOT NULL REFERENCES episodes(id),
    rating REAL NOT NULL,            -- 1..scale
    scale INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    prompt TEXT NOT NULL,
    completion_a TEXT NOT NULL,
    completion_b TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    disagreement REAL,               -- the ensemble's std that chose this pair, if any
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS choices (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    prompt TEXT NOT NULL,
    completions TEXT NOT NULL,       -- JSON list of the K completions, in the order shown
    best INTEGER NOT NULL,           -- index into completions, from 0 (the screen numbers them from 1)
    worst INTEGER,                   -- index of the worst, NULL when the person gave none
    at REAL NOT NULL
);
"""

_LEGACY_COLUMNS = {
    "sessions": ("id", "started_at", "ended_at", "mode", "options"),
    "episodes": ("id", "session_id", "prompt", "completion", "token_ids", "tokens", "shown_at", "hidden_at",
                 "created_at"),
    "keypresses": ("id", "session_id", "episode_id", "at", "key", "value", "strength"),
    "token_rewards": ("episode_id", "position", "reward", "mass"),
    "ratings": ("id", "session_id", "episode_id", "rating", "scale", "at"),
    "comparisons": ("id", "session_id", "prompt", "completion_a", "completion_b", "choice", "disagreement", "at"),
}
"""The tables of schema version 1 and their columns: what a store written before the mark must hold to be adopted
(the mark came before version 2, so an unmarked store never has its later tables)."""


class FeedbackStoreError(RuntimeError):
    """The database cannot be opened or is not a feedback store; the message says which file."""


@dataclass(frozen=True)
class Keypress:
    """One keypress as stored.

    Attributes:
        at: wall time (``time.time()``) of the press.
        key: the key's on-screen name.
        value: +1 (good) or -1 (bad).
        strength: the strength level in force (1.0 is the default).
        episode_id: the episode on screen, if any.
    """

    at: float
    key: str
    value: float
    strength: float = 1.0
    episode_id: int | None = None

    @property
    def signal(self) -> float:
        """The feedback it gives: ``value * strength``."""
        return self.value * self.strength


class FeedbackStore:
    """A SQLite feedback database (created on first use).

    Example::

        with FeedbackStore("feedback.db") as store:
            session = store.start_session("rate")
            episode = store.add_episode(session, "The movie", " was great", [10, 11], [" was", " great"])
            store.add_rating(session, episode, 5, scale=5)
    """

    def __init__(self, path: str | Path):
        """Open (or create) the store at ``path``.

        Raises:
            FeedbackStoreError: the file is not a feedback store (another program's database,
                or not SQLite at all: refused untouched) or cannot be written.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        inspect_database(self.path)  # raises before anything is written to another program's file
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            with self._transaction():  # the mark and the tables appear together, or not at all
                if self._db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:  # new, or legacy
                    self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)  # idempotent: CREATE ... IF NOT EXISTS
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise FeedbackStoreError(f"{self.path}: cannot open the feedback store: {exc}") from None

    # ------------------------------------------------------------------ writing

    def _transaction(self):
        return _Transaction(self._db, self._lock)

    def _insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run one INSERT and commit it before returning its row id."""
        with self._transaction():
            return int(self._db.execute(sql, params).lastrowid)

    def start_session(self, mode: str, **options: Any) -> int:
        """Record the start of a labelling or training session; returns its id."""
        return self._insert(
            "INSERT INTO sessions (started_at, mode, options) VALUES (?, ?, ?)",
            (time.time(), mode, json.dumps(options, default=str)),
        )

    def end_session(self, session_id: int) -> None:
        """Record the end of a session."""
        with self._transaction():
            self._db.execute("UPDATE sessions SET ended_at = ? WHERE id = ?", (time.time(), session_id))

    def add_episode(
        self,
        session_id: int,
        prompt: str,
        completion: str,
        token_ids: Sequence[int],
        tokens: Sequence[str],
    ) -> int:
        """Record a completion about to be shown; returns its id."""
        return self._insert(
            "INSERT INTO episodes (session_id, prompt, completion, token_ids, tokens, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, prompt, completion, json.dumps([int(i) for i in token_ids]),
             json.dumps(list(tokens)), time.time()),
        )

    def set_display_times(self, episode_id: int, shown_at: Sequence[float], hidden_at: float | None) -> None:
        """Record when each token of an episode appeared and when the last one was followed (None: still shown)."""
        with self._transaction():
            self._write_display_times(episode_id, shown_at, hidden_at)

    def add_keypress(
        self,
        session_id: int,
        press: Keypress,
        *,
        display_times: Mapping[int, tuple[Sequence[float], float | None]] | None = None,
        token_rewards: Mapping[int, tuple[Sequence[float], Sequence[float]]] | None = None,
    ) -> int:
        """Commit one keypress (called from the key-reader thread as soon as it is read).

        Args:
            session_id: the session it belongs to.
            press: the keypress.
            display_times: per episode id, ``(shown_at, hidden_at)`` of the tokens on screen so far
                (see :meth:`set_display_times`), committed with the press: what crediting it needs
                survives whatever survives the press.
            token_rewards: per episode id, ``(rewards, masses)``, the credit so far; stored too.
        """
        with self._transaction():
            row = int(self._db.execute(
                "INSERT INTO keypresses (session_id, episode_id, at, key, value, strength) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, press.episode_id, press.at, press.key, press.value, press.strength),
            ).lastrowid)
            for episode_id, (shown_at, hidden_at) in (display_times or {}).items():
                self._write_display_times(episode_id, shown_at, hidden_at)
            for episode_id, (rewards, masses) in (token_rewards or {}).items():
                self._write_token_rewards(episode_id, rewards, masses)
            return row

    def set_token_rewards(self, episode_id: int, rewards: Sequence[float], masses: Sequence[float]) -> None:
        """Store (replace) the credited per-token rewards of an episode."""
        with self._transaction():
            self._write_token_rewards(episode_id, rewards, masses)

    def _write_display_times(self, episode_id: int, shown_at: Sequence[float], hidden_at: float | None) -> None:
        self._db.execute(
            "UPDATE episodes SET shown_at = ?, hidden_at = ? WHERE id = ?",
            (json.dumps([float(t) for t in shown_at]), None if hidden_at is None else float(hidden_at), episode_id),
        )

    def _write_token_rewards(self, episode_id: int, rewards: Sequence[float], masses: Sequence[float]) -> None:
        self._db.execute("DELETE FROM token_rewards WHERE episode_id = ?", (episode_id,))
        self._db.executemany(
            "INSERT INTO token_rewards (episode_id, position, reward, mass) VALUES (?, ?, ?, ?)",
            [(episode_id, k, float(r), float(m)) for k, (r, m) in enumerate(zip(rewards, masses))],
        )

    def add_rating(self, session_id: int, episode_id: int, rating: float, *, scale: int) -> int:
        """Commit a rating of a whole completion (1..scale)."""
        if not 1 <= rating <= scale:
            raise ValueError(f"a rating is between 1 and {scale}, got {rating}")
        return self._insert(
            "INSERT INTO ratings (session_id, episode_id, rating, scale, at) VALUES (?, ?, ?, ?, ?)",
            (session_id, episode_id, float(rating), scale, time.time()),
        )

    def add_comparison(
        self,
        session_id: int,
        prompt: str,
        completion_a: str,
        completion_b: str,
        choice: str,
        disagreement: float | None = None,
    ) -> int:
        """Commit an A/B answer: ``"a"``, ``"b"``, ``"tie"`` or ``"skip"``."""
        if choice not in ("a", "b", "tie", "skip"):
            raise ValueError(f"choice is 'a', 'b', 'tie' or 'skip', got {choice!r}")
        return self._insert(
            "INSERT INTO comparisons (session_id, prompt, completion_a, completion_b, choice, disagreement, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, prompt, completion_a, completion_b, choice, disagreement, time.time()),
        )

    def add_choice(
        self, session_id: int, prompt: str, completions: Sequence[str], best: int, worst: int | None = None
    ) -> int:
        """Commit a best-of-K answer: which of ``completions`` (as shown) is best, and which is worst.

        Args:
            session_id: the session it belongs to.
            prompt: the prompt all K completions answer.
            completions: the K >= 2 completions, in the order shown.
            best: the best one's index into ``completions``.
            worst: the worst one's index, or None (not given).

        Returns:
            The answer's row id (:meth:`set_choice_worst` adds a worst given later).

        Raises:
            ValueError: fewer than two completions, an index out of range, or the same one as best and worst.
        """
        if len(completions) < 2:
            raise ValueError(f"a best-of-K answer chooses among 2 or more completions, got {len(completions)}")
        self._check_choice(len(completions), best, worst)
        return self._insert(
            "INSERT INTO choices (session_id, prompt, completions, best, worst, at) VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, prompt, json.dumps(list(completions), ensure_ascii=False), int(best),
             None if worst is None else int(worst), time.time()),
        )

    def set_choice_worst(self, choice_id: int, worst: int) -> None:
        """Commit the worst of a best-of-K answer stored already (the person names it after the best)."""
        with self._transaction():
            row = self._db.execute("SELECT completions, best FROM choices WHERE id = ?", (choice_id,)).fetchone()
            if row is None:
                raise ValueError(f"no best-of-K answer with id {choice_id}")
            self._check_choice(len(json.loads(row[0])), row[1], worst)
            self._db.execute("UPDATE choices SET worst = ? WHERE id = ?", (int(worst), choice_id))

    @staticmethod
    def _check_choice(k: int, best: int, worst: int | None) -> None:
        for name, index in (("best", best), ("worst", worst)):
            if index is not None and not (isinstance(index, numbers.Integral) and 0 <= index < k):
                raise ValueError(f"{name} is the index of one of the {k} completions (0 to {k - 1}), got {index!r}")
        if worst == best:
            raise ValueError(f"the worst completion cannot be the best one too (both {best})")

    # ------------------------------------------------------------------ reading

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _one(self, sql: str) -> dict[str, Any]:
        """The one row of an aggregate query."""
        return self._rows(sql)[0]

    def keypresses(self, session_id: int | None = None) -> list[Keypress]:
        """Every stored keypress (of one session, or all), in time order."""
        where, params = ("WHERE session_id = ?", (session_id,)) if session_id is not None else ("", ())
        return [
            Keypress(r["at"], r["key"], r["value"], r["strength"], r["episode_id"])
            for r in self._rows(f"SELECT * FROM keypresses {where} ORDER BY at, id", params)
        ]

    def episodes(self, session_id: int | None = None) -> list[dict[str, Any]]:
        """Every stored episode (JSON columns decoded), oldest first."""
        where, params = ("WHERE session_id = ?", (session_id,)) if session_id is not None else ("", ())
        rows = self._rows(f"SELECT * FROM episodes {where} ORDER BY id", params)
        for r in rows:
            for key in ("token_ids", "tokens", "shown_at"):
                r[key] = json.loads(r[key]) if r[key] is not None else None
        return rows

    def token_feedback(self) -> list[tuple[list[int], list[float], list[float]]]:
        """Per credited episode: (token ids, per-token rewards, per-token credit masses)."""
        rows = self._rows(
            "SELECT t.episode_id, e.token_ids, t.reward, t.mass FROM token_rewards t "
            "JOIN episodes e ON e.id = t.episode_id ORDER BY t.episode_id, t.position"
        )
        by_episode: dict[int, tuple[list[int], list[float], list[float]]] = {}
        for r in rows:
            _, rewards, masses = by_episode.setdefault(r["episode_id"], (json.loads(r["token_ids"]), [], []))
            rewards.append(r["reward"])
            masses.append(r["mass"])
        return list(by_episode.values())

    def ratings(self) -> list[dict[str, Any]]:
        """Every rating with its episode's prompt and completion."""
        return self._rows(
            "SELECT r.id, r.session_id, r.episode_id, r.rating, r.scale, r.at, e.prompt, e.completion "
            "FROM ratings r JOIN episodes e ON e.id = r.episode_id ORDER BY r.id"
        )

    def comparisons(self) -> list[dict[str, Any]]:
        """Every A/B answer, oldest first."""
        return self._rows("SELECT * FROM comparisons ORDER BY id")

    def choices(self) -> list[dict[str, Any]]:
        """Every best-of-K answer (``completions`` decoded to a list), oldest first."""
        rows = self._rows("SELECT * FROM choices ORDER BY id")
        for r in rows:
            r["completions"] = json.loads(r["completions"])
        return rows

    def preference_pairs(
        self, *, include_ratings: bool = True, include_tokens: bool = True, token_margin: float = 0.5
    ) -> list[dict[str, Any]]:
        """The preferences the answers imply, as ``{"prompt", "chosen", "rejected"}`` dicts.

        A/B answers give one pair each (ties and skips give none). A best-of-K answer gives
        K−1 pairs (the best over each other one), and K−2 more when a worst was given (each
        of the others over the worst): see :func:`choice_pairs`. With ``include_ratings``,
        two rated completions of the same prompt with different ratings give a pair too, with
        ``margin`` = the rating difference over the scale. With ``include_tokens``, so do two
        completions of the same prompt whose summed credited keypress rewards differ by at
        least ``token_margin`` (half a press by default).
        """
        pairs = []
        for c in self.comparisons():
            if c["choice"] in ("a", "b"):
                chosen, rejected = (
                    (c["completion_a"], c["completion_b"]) if c["choice"] == "a"
                    else (c["completion_b"], c["completion_a"])
                )
                pairs.append({"prompt": c["prompt"], "chosen": chosen, "rejected": rejected})
        for c in self.choices():
            pairs.extend(choice_pairs(c["prompt"], c["completions"], c["best"], c["worst"]))
        if include_ratings:
            by_prompt: dict[str, list[dict[str, Any]]] = {}
            for r in self.ratings():
                by_prompt.setdefault(r["prompt"], []).append(r)
            for prompt, rated in by_prompt.items():
                for i, first in enumerate(rated):
                    for second in rated[i + 1 :]:
                        if first["rating"] == second["rating"] or first["completion"] == second["completion"]:
                            continue
                        hi, lo = (first, second) if first["rating"] > second["rating"] else (second, first)
                        pairs.append({
                            "prompt": prompt, "chosen": hi["completion"], "rejected": lo["completion"],
                            "margin": (hi["rating"] - lo["rating"]) / max(hi["scale"], 1),
                        })
        if include_tokens:
            rows = self._rows(
                "SELECT e.prompt, e.completion, SUM(t.reward) AS total FROM token_rewards t "
                "JOIN episodes e ON e.id = t.episode_id GROUP BY t.episode_id ORDER BY t.episode_id"
            )
            by_prompt = {}
            for r in rows:
                by_prompt.setdefault(r["prompt"], []).append(r)
            for prompt, scored in by_prompt.items():
                for i, first in enumerate(scored):
                    for second in scored[i + 1 :]:
                        gap = first["total"] - second["total"]
                        if abs(gap) < token_margin or first["completion"] == second["completion"]:
                            continue
                        hi, lo = (first, second) if gap > 0 else (second, first)
                        pairs.append({"prompt": prompt, "chosen": hi["completion"], "rejected": lo["completion"],
                                      "margin": abs(gap)})
        return pairs

    def why_no_pairs(self, *, include_ratings: bool = True, include_tokens: bool = True,
                     token_margin: float = 0.5) -> str:
        """Why :meth:`preference_pairs` (with the same arguments) gives none, in one line for the person.

        Names what the store holds that could give pairs and what each kind needs, e.g.
        ``"12 ratings over 12 prompts: pairs come from two completions of one prompt rated differently"``.
        """
        reasons = []
        ab = self._one("SELECT COUNT(*) AS n FROM comparisons")["n"]
        if ab:
            reasons.append(f"{ab} A/B answer{_s(ab)}, all ties or skips")
        best = self._one("SELECT COUNT(*) AS n FROM choices")["n"]
        if best:
            reasons.append(f"{best} best-of-K answer{_s(best)}, each among identical completions")
        rated = self._one("SELECT COUNT(*) AS n, COUNT(DISTINCT e.prompt) AS prompts FROM ratings r "
                    "JOIN episodes e ON e.id = r.episode_id")
        if rated["n"] and not include_ratings:
            reasons.append(f"{rated['n']} rating{_s(rated['n'])} left out (--no-ratings)")
        elif rated["n"]:
            reasons.append(f"{rated['n']} rating{_s(rated['n'])} over {rated['prompts']} "
                           f"prompt{_s(rated['prompts'])}: pairs come from two completions of one prompt "
                           "rated differently")
        credited = self._one("SELECT COUNT(DISTINCT t.episode_id) AS n, COUNT(DISTINCT e.prompt) AS prompts "
                       "FROM token_rewards t JOIN episodes e ON e.id = t.episode_id")
        if credited["n"] and not include_tokens:
            reasons.append(f"{credited['n']} completion{_s(credited['n'])} credited from keypresses left out "
                           "(--no-tokens)")
        elif credited["n"]:
            reasons.append(f"{credited['n']} completion{_s(credited['n'])} credited from keypresses over "
                           f"{credited['prompts']} prompt{_s(credited['prompts'])}: pairs come from two completions "
                           f"of one prompt whose credited rewards differ by at least {token_margin:g} press"
                           f"{'es' if token_margin > 1 else ''}")
        return "; ".join(reasons) or "the store holds no ratings, A/B or best-of-K answers, or credited keypresses"

    def export_preferences(self, path: str | Path, *, include_ratings: bool = True, include_tokens: bool = True) -> int:
        """Write :meth:`preference_pairs` as JSONL (the format TRL and ``datasets`` read).

        The file is written to a temporary name and renamed, so a reader never sees half of it.

        Returns:
            The number of pairs written.
        """
        pairs = self.preference_pairs(include_ratings=include_ratings, include_tokens=include_tokens)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for pair in pairs:
                f.write(json.dumps(pair, ensure_ascii=False) + "\n")
        tmp.replace(path)
        return len(pairs)

    def stats(self) -> dict[str, Any]:
        """Counts and summaries of everything stored."""
        keys = self._one(
            "SELECT COUNT(*) AS n, COALESCE(SUM(value > 0), 0) AS good, COALESCE(SUM(value < 0), 0) AS bad, "
            "MIN(at) AS first, MAX(at) AS last FROM keypresses"
        )
        ratings = self._one("SELECT COUNT(*) AS n, AVG(rating) AS mean, AVG(scale) AS scale FROM ratings")
        comparisons = self._one(
            "SELECT COUNT(*) AS n, COALESCE(SUM(choice = 'a'), 0) AS a, COALESCE(SUM(choice = 'b'), 0) AS b, "
            "COALESCE(SUM(choice = 'tie'), 0) AS tie, COALESCE(SUM(choice = 'skip'), 0) AS skip FROM comparisons"
        )
        sessions = self._one(
            "SELECT COUNT(*) AS n, COALESCE(SUM(COALESCE(ended_at, started_at) - started_at), 0) AS seconds "
            "FROM sessions"
        )
        choices = self._one("SELECT COUNT(*) AS n, COALESCE(SUM(worst IS NOT NULL), 0) AS worst FROM choices")
        shown = self._one("SELECT COUNT(*) AS n FROM episodes")
        credited = self._one("SELECT COUNT(DISTINCT episode_id) AS n, AVG(reward) AS mean FROM token_rewards")
        return {
            "sessions": sessions["n"],
            "session_seconds": float(sessions["seconds"]),
            "episodes_shown": shown["n"],
            "keypresses": keys["n"],
            "keypresses_good": keys["good"],
            "keypresses_bad": keys["bad"],
            "episodes_credited": credited["n"],
            "mean_token_reward": credited["mean"],
            "ratings": ratings["n"],
            "mean_rating": ratings["mean"],
            "comparisons": comparisons["n"],
            "comparisons_a": comparisons["a"],
            "comparisons_b": comparisons["b"],
            "comparisons_tie": comparisons["tie"],
            "comparisons_skip": comparisons["skip"],
            "choices": choices["n"],
            "choices_with_worst": choices["worst"],
            "preference_pairs": len(self.preference_pairs()),
        }

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the connection (every label is already committed)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _s(n: int) -> str:
    """The plural ending for ``n`` things."""
    return "" if n == 1 else "s"


def choice_pairs(prompt: str, completions: Sequence[str], best: int, worst: int | None) -> list[dict[str, str]]:
    """The preference pairs one best-of-K answer implies.

    The best is preferred to each of the K−1 others; with a worst, each of the K−2 others
    that are neither best nor worst is preferred to it (2K−3 pairs in all). A pair of two
    identical texts says nothing and is left out.

    Example::

        pairs = choice_pairs("p", ["x", "y", "z"], best=1, worst=2)
        [(p["chosen"], p["rejected"]) for p in pairs]  # y over x, y over z, x over z
    """
    ordered = [(completions[best], other) for k, other in enumerate(completions) if k != best]
    if worst is not None:
        ordered += [(other, completions[worst]) for k, other in enumerate(completions) if k not in (best, worst)]
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected} for chosen, rejected in ordered
            if chosen != rejected]


def check_store_path(path: str | Path) -> None:
    """Refuse a directory given as the store, in one line (``--db runs/``, ``human(db=runs)``).

    Raises:
        FeedbackStoreError: the path is a directory.
    """
    if Path(path).is_dir():
        raise FeedbackStoreError(f"{path}: is a directory; expected a feedback store file (or a new file's path)")


def inspect_database(path: str | Path) -> str:
    """What ``path`` holds, found without writing to it: ``"new"``, ``"store"`` or ``"legacy"``.

    ``"new"``: no file, an empty file, or a SQLite database with nothing in it (ours to
    initialise). ``"store"``: a database marked with :data:`APPLICATION_ID`. ``"legacy"``: a
    store written before the mark existed (exactly the tables and columns of schema version 1,
    ``user_version`` at most 1), which :class:`FeedbackStore` marks (and gives the later tables)
    when it opens it.

    Raises:
        FeedbackStoreError: anything else (one line naming the file and what was expected).
    """
    path = Path(path)
    check_store_path(path)
    expected = f"expected a textenv feedback store (SQLite, application_id {APPLICATION_ID:#x}) or a new file"
    try:
        if not path.exists() or (path.is_file() and path.stat().st_size == 0):
            return "new"
        with path.open("rb") as f:
            magic = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise FeedbackStoreError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if magic != _SQLITE_MAGIC:
        raise FeedbackStoreError(f"{path}: not a SQLite database; {expected}; left untouched")
    # Read-only, and immutable unless a WAL file exists: without one the main file holds every commit, and
    # immutable keeps SQLite from creating -wal and -shm files beside another program's database.
    wal = path.with_name(path.name + "-wal").exists()
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro{'' if wal else '&immutable=1'}"
    try:
        db = sqlite3.connect(uri, uri=True)
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            objects = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
            tables = {name for kind, name in objects if kind == "table"}
            columns = {t: tuple(r[1] for r in db.execute("SELECT * FROM pragma_table_info(?)", (t,))) for t in tables}
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise FeedbackStoreError(f"{path}: cannot read it as a SQLite database ({exc}); {expected}") from None
    if app_id == APPLICATION_ID:
        return "store"
    if app_id == 0 and not objects and version == 0:
        return "new"
    if app_id == 0 and columns == dict(_LEGACY_COLUMNS) and len(objects) == len(tables) and version <= 1:
        return "legacy"
    held = f"its application_id is {app_id:#x}" if app_id else "tables: " + (", ".join(sorted(tables)) or "none")
    raise FeedbackStoreError(f"{path}: another program's SQLite database ({held}); {expected}; left untouched")


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self.db, self.lock = db, lock

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
