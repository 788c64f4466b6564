"""The token-feedback session: stream completions at a reading pace, take keys, credit them.

:class:`TokenFeedback` ties together the store, the key reader and the display. It
shows each completion token by token at ``pace`` tokens per second; the person
presses keys whenever they like (the reader thread commits each press to the store
the moment it is read); at the end the presses are credited to the tokens through
the delay distribution (:mod:`textenv.plugins.human.credit`) and the per-token rewards
are stored too.

Keys (shown on screen at the start and with ``?``):

====================  ==========================================
``↑``  ``+``  ``g``   good
``↓``  ``-``  ``b``   bad
``1`` … ``9``         strength of the next presses (5 = normal)
``space``             pause / go on
``q``                 quit giving feedback
``?``  ``h``          help
====================  ==========================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from textenv.plugins.human.credit import UniformDelay, credit_keypresses, hidden_times
from textenv.plugins.human.store import FeedbackStore, Keypress
from textenv.plugins.human.terminal import Key, KeyReader

GOOD_KEYS = ("up", "+", "=", "g")
BAD_KEYS = ("down", "-", "_", "b")
PAUSE_KEY, QUIT_KEY, HELP_KEYS = "space", "q", ("?", "h")
DEFAULT_STRENGTH = 5
HELP = "keys: ↑ + g good · ↓ - b bad · 1-9 strength (5 normal) · space pause · q quit · ? help"
COMPLETION_START, COMPLETION_END = "▸", "◂"

_DIM, _RESET = "\x1b[2m", "\x1b[0m"


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """How completions are shown and keypresses credited."""

    pace: float = 4.0
    """Tokens shown per second."""
    delay: UniformDelay = field(default_factory=UniformDelay)
    """The reaction-delay distribution used to credit a keypress to tokens."""
    gap: float = 0.5
    """Seconds the end of each completion stays on screen before the next one starts."""
    linger: float = 1.0
    """Seconds to wait after the last completion for late keypresses."""

    def __post_init__(self) -> None:
        if self.pace <= 0:
            raise ValueError(f"pace is tokens per second and must be positive, got {self.pace}")
        if self.gap < 0 or self.linger < 0:
            raise ValueError("gap and linger are seconds and cannot be negative")


@dataclass
class StreamResult:
    """What one call of :meth:`TokenFeedback.stream` showed and collected.

    Attributes:
        shown: indices of the completions that were shown (all unless the person quit).
        rewards: per completion, (T_i,) credited human rewards (zeros where unshown).
        masses: per completion, (T_i,) the summed credit weight of each token.
        presses: the good/bad keypresses credited in this call.
        attentive: whether a key was pressed while these completions were on screen.
        episode_ids: per completion, its row in the store (None where unshown).
    """

    shown: list[int]
    rewards: list[np.ndarray]
    masses: list[np.ndarray]
    presses: list[Keypress]
    episode_ids: list[int | None]
    attentive: bool


class TokenFeedback:
    """A person at a terminal giving TAMER feedback on streamed completions.

    Args:
        store: where every label goes.
        session_id: the store session the labels belong to.
        config: pace and credit settings.
        reader: a started-or-not :class:`KeyReader`; its ``on_key`` is set here.
        out: where the display goes (the reader's terminal by default).
    """

    def __init__(self, store: FeedbackStore, session_id: int, *, config: StreamConfig = StreamConfig(),
                 reader: KeyReader, out: TextIO | None = None):
        self.store, self.session_id, self.config = store, session_id, config
        self.reader = reader
        reader.on_key = self.on_key
        self.out = out or reader.output()
        self.strength_level = DEFAULT_STRENGTH
        self.paused = threading.Event()
        self.quit = threading.Event()
        self.current_episode: int | None = None
        self._presses: list[Keypress] = []
        self._messages: list[str] = []
        self._lock = threading.Lock()
        self.n_presses = 0

    # ------------------------------------------------------- reader thread side

    def on_key(self, key: Key) -> None:
        """Act on one key (called in the reader thread; a good/bad press is committed here)."""
        if key.name in GOOD_KEYS or key.name in BAD_KEYS:
            press = Keypress(
                at=key.at, key=key.name, value=1.0 if key.name in GOOD_KEYS else -1.0,
                strength=self.strength_level / DEFAULT_STRENGTH, episode_id=self.current_episode,
            )
            self.store.add_keypress(self.session_id, press)
            with self._lock:
                self._presses.append(press)
                self.n_presses += 1
        elif key.name.isdigit() and key.name != "0":
            if int(key.name) != self.strength_level:
                self.strength_level = int(key.name)
                self._say(f"strength {self.strength_level}")
        elif key.name == PAUSE_KEY:
            if self.paused.is_set():
                self.paused.clear()
            else:
                self.paused.set()
                self._say("paused: space to go on")
        elif key.name == QUIT_KEY or key.name == "hangup":
            self.quit.set()
        elif key.name in HELP_KEYS:
            self._say(HELP)
        else:
            self._say(f"key {key.name!r} does nothing here; press ? for help")

    def _say(self, message: str) -> None:
        with self._lock:
            self._messages.append(message)

    def take_presses(self) -> list[Keypress]:
        """The good/bad presses received since the last call."""
        with self._lock:
            presses, self._presses = self._presses, []
        return presses

    # ---------------------------------------------------------- display side

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _flush_messages(self) -> None:
        with self._lock:
            messages, self._messages = self._messages, []
        for message in messages:
            self.write(f"\n  ({message})\n")

    def wait(self, until: float, idle: Callable[[], None] | None = None) -> float:
        """Sleep until wall time ``until`` (later by any pause); returns how long a pause added."""
        paused_for = 0.0
        while True:
            self._flush_messages()
            if self.quit.is_set():
                return paused_for
            if self.paused.is_set():
                start = time.time()
                while self.paused.is_set() and not self.quit.is_set():
                    time.sleep(0.02)
                    self._flush_messages()
                paused_for += time.time() - start
                until += time.time() - start
                continue
            left = until - time.time()
            if left <= 0:
                return paused_for
            if idle is not None and left > 0.03:
                idle()  # Ĥ's scheduled training step, when one is due
                left = until - time.time()
            time.sleep(max(0.0, min(left, 0.02)))

    def stream(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        tokens: Sequence[Sequence[str]],
        *,
        title: str = "",
        idle: Callable[[], None] | None = None,
    ) -> StreamResult:
        """Show each completion token by token, then credit the keypresses to the tokens.

        Args:
            prompts, completions, completion_ids, tokens: the episodes (``tokens``: each
                token decoded on its own, as the reward context gives them).
            title: shown above the first completion.
            idle: called while waiting between tokens (Ĥ trains there).

        Returns:
            The credited rewards per completion; the person may have quit part-way.
        """
        cfg = self.config
        n = len(completions)
        episode_ids: list[int | None] = [None] * n
        shown_at: list[list[float]] = [[] for _ in range(n)]
        ends: list[float] = [0.0] * n
        shown: list[int] = []
        if title:
            self.write(f"\n{title}\n{_DIM}{HELP}{_RESET}\n")
        for i in range(n):
            if self.quit.is_set():
                break
            episode_ids[i] = self.store.add_episode(
                self.session_id, prompts[i], completions[i], completion_ids[i], tokens[i]
            )
            self.current_episode = episode_ids[i]
            self.write(f"\n{_DIM}[{i + 1}/{n}] {prompts[i]}{_RESET} {COMPLETION_START}")
            step = 1.0 / cfg.pace
            next_time = time.time() + step
            for piece in tokens[i]:
                next_time += self.wait(next_time, idle)
                if self.quit.is_set():
                    break
                shown_at[i].append(time.time())
                self.write(printable(piece))
                next_time = max(next_time, time.time()) + step  # behind schedule: no burst to catch up
            self.write(f"{COMPLETION_END}\n")
            self.wait(time.time() + (cfg.linger if i == n - 1 else cfg.gap), idle)
            ends[i] = time.time()
            self.current_episode = None
            shown.append(i)
        presses = self.take_presses()
        rewards = [np.zeros(len(ids)) for ids in completion_ids]
        masses = [np.zeros(len(ids)) for ids in completion_ids]
        timeline = [(i, k) for i in shown for k in range(len(shown_at[i]))]
        if timeline:
            shown_flat = np.concatenate([shown_at[i] for i in shown])  # (K,)
            hidden_flat = np.concatenate([hidden_times(shown_at[i], ends[i]) for i in shown])  # (K,)
            flat_rewards, flat_masses = credit_keypresses(
                [p.at for p in presses], [p.signal for p in presses], shown_flat, hidden_flat, cfg.delay
            )  # (K,) each
            for (i, k), r, m in zip(timeline, flat_rewards, flat_masses):
                rewards[i][k], masses[i][k] = r, m
        started = min((shown_at[i][0] for i in shown if shown_at[i]), default=np.inf)
        attentive = any(p.at >= started for p in presses)  # keys pressed while this was on screen
        for i in shown:
            if shown_at[i]:
                self.store.set_display_times(episode_ids[i], shown_at[i], ends[i])
            if attentive:  # the person was watching: zeros mean "nothing to say", worth storing
                self.store.set_token_rewards(episode_ids[i], rewards[i], masses[i])
        return StreamResult(shown, rewards, masses, presses, episode_ids, attentive)


def printable(piece: str) -> str:
    """A token as it may safely go to a terminal: control characters as their visible pictures (␛, ␉)."""
    return "".join(
        ch if ch == "\n" or (ch >= " " and ch != "\x7f") else chr(0x2400 + (ord(ch) if ch != "\x7f" else 0x21))
        for ch in piece
    )
