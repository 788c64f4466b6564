"""The token-feedback session: stream completions at a reading pace, take keys, credit them.

:class:`TokenFeedback` ties together the store, the key reader and the display. It
shows each completion token by token at ``pace`` tokens per second; the person
presses keys whenever they like; the presses are credited to the tokens through the
delay distribution (:mod:`textenv.plugins.human.credit`) and the per-token rewards are
stored too.

Durability: the reader thread commits each press the moment it is read, and in the same
transaction the display times of the batch's tokens so far and the credit so far (a
press is only ever credited to tokens shown before it, so that is all it needs). Each
completion's display times are committed again when it leaves the screen, and the final
credit at the end of the batch. A ``kill -9`` mid-batch thus keeps every press creditable,
and credited: the batch's preference pairs export as if it had ended at the last press.

Display (:class:`Screen`): lines break between words at the terminal's width, not where the terminal
runs out of columns, and nothing else is written inside a line of the stream. A hint (a strength, an
unknown key) waits for the end of the completion; what the person asked to see at once (``?``, the
pause) comes on a line of its own, in place of the line being streamed, which is written again below it.

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

import os
import re
import sys
import textwrap
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from textenv.plugins.human.credit import UniformDelay, credit_keypresses, hidden_times
from textenv.plugins.human.store import FeedbackStore, Keypress
from textenv.plugins.human.terminal import Key, KeyReader
from textenv.prompts import shortened

GOOD_KEYS = ("up", "+", "=", "g")
BAD_KEYS = ("down", "-", "_", "b")
PAUSE_KEY, QUIT_KEY, HELP_KEYS = "space", "q", ("?", "h")
DEFAULT_STRENGTH = 5
HELP = "keys: ↑ + g good · ↓ - b bad · 1-9 strength (5 normal) · space pause · q quit · ? help"
COMPLETION_START, COMPLETION_END = "▸", "◂"
GOOD_MARK, BAD_MARK = "▲", "▼"
"""Shown in the stream where a good or bad press was received: the person sees each press counted."""

_DIM, _RESET, _GREEN, _RED = "\x1b[2m", "\x1b[0m", "\x1b[32m", "\x1b[31m"
_ERASE_LINE = "\r\x1b[K"  # back to the start of the line, and clear it
_RUNS = re.compile(r"\n|[^\S\n]+|\S+")  # a line break, a run of other blanks, or a run of word characters
_WORD = re.compile(r"\S*")


def cells(text: str) -> int:
    """The terminal columns ``text`` takes: wide (East Asian) characters two, combining and format characters none.

    Example:
        >>> cells("good"), cells("映画"), cells("e\u0301")
        (4, 4, 1)
    """
    return len(text) if text.isascii() else sum(_cells_of(ch) for ch in text)


def _cells_of(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


class Screen:
    """The lines of a stream on a terminal: broken between words at its width, and never split by a message.

    The terminal's own wrapping cuts a word where the columns run out, and a note written where the stream
    is splits the line being read. Here a line ends before the last column, at a blank where the next word
    would not fit (a word wider than a line is cut where the line ends); :meth:`text` is given the rest of
    the word a piece ends in, so a word streamed token by token is placed whole. :meth:`paragraph` puts a
    note on lines of its own: between lines, or, in the middle of one, in its place, that line (kept as
    written) being written again below it.

    Args:
        out: the terminal's stream.
        width: the terminal's width in columns, asked at each write (the person may resize it); 0 if unknown
            (a program reads the display, not a person): lines are then not broken.
    """

    def __init__(self, out: TextIO, width: Callable[[], int]):
        self.out, self._width = out, width
        self.line: list[str] = []
        """The current line as written, colours included (each piece sets and resets its own)."""
        self.column = 0
        self._in_word = False  # the last thing written was part of a word (a piece may end mid-word)

    @property
    def limit(self) -> int:
        """The columns a line may fill: all but the last, so that the terminal never wraps a line itself."""
        width = self._width()
        return max(width, 20) - 1 if width > 0 else sys.maxsize

    def text(self, text: str, *, ahead: str = "", style: str = "") -> None:
        """Write ``text``, breaking lines between words.

        Args:
            text: what to write; a newline ends a line.
            ahead: the characters that will follow it up to the next blank (the rest of the word it ends in,
                or the word after its last blank), so that the word is placed as a whole.
            style: an escape sequence for the text's colour (reset after it).
        """
        limit, lines = self.limit, [""]  # what goes on the current line, then on each line begun here

        def word_at(pos: int) -> str:
            word = _WORD.match(text, pos).group()
            return word + ahead if pos + len(word) == len(text) else word

        def put(piece: str) -> None:
            lines[-1] += piece
            self.column += cells(piece)

        def newline() -> None:
            lines.append("")
            self.column, self._in_word = 0, False

        for run in _RUNS.finditer(text):
            piece = run.group()
            if piece == "\n":
                newline()
            elif piece.isspace() and self.column:
                if self.column + cells(piece) + cells(word_at(run.end())) > limit:
                    newline()  # the break stands for the blanks
                else:
                    put(piece)
            else:
                starts = self.column and not self._in_word and not piece.isspace()  # after a symbol, not a blank
                if starts and self.column + cells(word_at(run.start())) > limit:
                    newline()
                if self.column + cells(piece) > limit:  # longer than what is left of a line: cut it
                    for ch in piece:
                        if self.column + _cells_of(ch) > limit:
                            newline()
                        put(ch)
                else:
                    put(piece)
                self._in_word = not piece.isspace()
        rendered = [f"{style}{line}{_RESET}" if style and line else line for line in lines]
        if len(lines) > 1:
            self.line = []
        if rendered[-1]:
            self.line.append(rendered[-1])
        self._write("\n".join(rendered))

    def symbol(self, rendered: str, width: int = 1) -> None:
        """Write a symbol that is no part of a word (``▸``, the press marks), on the next line if the line is full.

        Args:
            rendered: the symbol, colours included.
            width: the columns it takes.
        """
        if self.column and self.column + width > self.limit:
            self.end_line()
        self.line.append(rendered)
        self.column += width
        self._write(rendered)

    def paragraph(self, text: str, *, indent: str = "", hang: str = "", style: str = "") -> None:
        """Write ``text`` on lines of its own, broken between words; in the middle of a line, in its place.

        Args:
            text: one paragraph.
            indent: the first line's indent.
            hang: the other lines' indent.
            style: its colour.
        """
        lines = textwrap.wrap(text, width=self.limit, initial_indent=indent, subsequent_indent=hang) or [indent]
        block = "".join(f"{style}{line}{_RESET if style else ''}\n" for line in lines)
        if self.column:  # the line being streamed, erased and written again below: it is never split
            self._write(f"{_ERASE_LINE}{block}{''.join(self.line)}")
        else:
            self._write(block)

    def end_line(self) -> None:
        """End the current line, if anything is on it."""
        if self.column or self.line:
            self.line, self.column, self._in_word = [], 0, False
            self._write("\n")

    def blank_line(self) -> None:
        """End the current line and leave an empty one."""
        self.end_line()
        self._write("\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


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


@dataclass
class _Batch:
    """The completions of the :meth:`TokenFeedback.stream` call in progress, in display order.

    The main thread appends as it displays; the reader thread reads it (under
    ``TokenFeedback._batch_lock``) to commit a press with what crediting it needs.
    """

    episode_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    shown_at: list[list[float]] = field(default_factory=list)
    """Per completion, when each token appeared (appended by the main thread as it shows one)."""
    ends: list[float | None] = field(default_factory=list)
    """Per completion, when it left the screen; None while it is still shown."""
    credited: set[int] = field(default_factory=set)
    """The completions whose credit some press's commit has stored."""

    def add(self, episode_id: int, length: int) -> list[float]:
        """Start a completion; returns the list its display times go into."""
        self.episode_ids.append(episode_id)
        self.lengths.append(length)
        self.shown_at.append([])
        self.ends.append(None)
        return self.shown_at[-1]

    @property
    def started(self) -> float:
        """When the first token appeared (inf before then)."""
        return min((shown[0] for shown in self.shown_at if shown), default=np.inf)

    def credit(
        self, presses: Sequence[Keypress], delay: UniformDelay, *, now: float, only: Sequence[int] | None = None
    ) -> tuple[list[list[float]], list[np.ndarray], list[np.ndarray]]:
        """Credit the presses to the tokens shown so far, one timeline across the completions.

        Args:
            presses: the presses to credit.
            delay: the reaction-delay distribution.
            now: the end of display of a completion still on screen (its last token's, at least).
            only: credit these completions only (each token's credit depends on its own display
                times alone, so a part of the timeline gives the same values as the whole).

        Returns:
            Per completion: its display times (a copy), (T_i,) rewards, (T_i,) masses (zeros
            outside ``only``).
        """
        shown = [list(times) for times in self.shown_at]  # a copy: the main thread may append meanwhile
        rewards = [np.zeros(n) for n in self.lengths]
        masses = [np.zeros(n) for n in self.lengths]
        part = [j for j in (range(len(shown)) if only is None else only) if shown[j]]
        if part and presses:
            ends = [self.ends[j] if self.ends[j] is not None else max(now, shown[j][-1]) for j in part]
            shown_flat = np.concatenate([shown[j] for j in part])  # (K,)
            hidden_flat = np.concatenate([hidden_times(shown[j], end) for j, end in zip(part, ends)])  # (K,)
            flat_rewards, flat_masses = credit_keypresses(
                [p.at for p in presses], [p.signal for p in presses], shown_flat, hidden_flat, delay
            )  # (K,) each
            offsets = np.cumsum([0] + [len(shown[j]) for j in part])
            for j, a, b in zip(part, offsets[:-1], offsets[1:]):
                rewards[j][: b - a], masses[j][: b - a] = flat_rewards[a:b], flat_masses[a:b]
        return shown, rewards, masses


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
        self.screen = Screen(self.out, self._terminal_width)
        self.strength_level = DEFAULT_STRENGTH
        self.paused = threading.Event()
        self.quit = threading.Event()
        self.current_episode: int | None = None
        self._presses: list[Keypress] = []
        self._messages: list[tuple[str, bool]] = []  # (message, whether it may split a completion)
        self._mid_completion = False  # between ▸ and ◂: hints wait for the ◂, the sentence stays whole
        self._marks: list[str] = []  # confirmations of presses not yet on screen
        self._lock = threading.Lock()
        # Held while a press is credited and committed, and while the main thread changes what it is
        # credited against (a completion leaves the screen, the batch ends): a press never commits a
        # stale view over a newer one. Always taken before the store's own lock, never inside it.
        self._batch_lock = threading.Lock()
        self._batch: _Batch | None = None
        self.n_presses = 0

    # ------------------------------------------------------- reader thread side

    def on_key(self, key: Key) -> None:
        """Act on one key (called in the reader thread; a good/bad press is committed here)."""
        if key.name in GOOD_KEYS or key.name in BAD_KEYS:
            press = Keypress(
                at=key.at, key=key.name, value=1.0 if key.name in GOOD_KEYS else -1.0,
                strength=self.strength_level / DEFAULT_STRENGTH, episode_id=self.current_episode,
            )
            with self._batch_lock:
                try:
                    display, credited = self._credit_so_far(press)
                except Exception as exc:  # noqa: BLE001  (the press itself must still be stored; the batch's
                    display, credited = None, None  # end credits every press again)
                    self._say(f"could not credit this press yet: {exc!r}")
                self.store.add_keypress(self.session_id, press, display_times=display, token_rewards=credited)
                with self._lock:
                    self._presses.append(press)
                    self._marks.append(GOOD_MARK if press.value > 0 else BAD_MARK)
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
                self._say("paused: space to go on", now=True)
        elif key.name == QUIT_KEY or key.name == "hangup":
            self.quit.set()
        elif key.name in HELP_KEYS:
            self._say(HELP, now=True)
        else:
            self._say(f"key {key.name!r} does nothing here; press ? for help")

    def _credit_so_far(self, press: Keypress) -> tuple[dict | None, dict | None]:
        """What to commit with a press: the batch's display times so far, and its credit so far.

        Called under the batch lock. The credit is the one the end of the batch would store for
        the presses so far, except that a completion still on screen ends at the press; like it,
        it is stored only once some press came while the batch was on screen. Only what this
        press changes is written (a press moves the credit of the tokens shown within
        ``max_delay`` before it; a completion that left the screen had its times committed
        then), plus the completions no commit has credited yet: a few rows per press, where
        rewriting a 64-completion batch took ~50 ms.
        """
        batch = self._batch
        if batch is None:
            return None, None
        with self._lock:
            presses = [*self._presses, press]
        shown = [list(times) for times in batch.shown_at]  # a copy: the main thread may append meanwhile
        display = {batch.episode_ids[j]: (times, None) for j, times in enumerate(shown)
                   if times and batch.ends[j] is None}
        started = min((times[0] for times in shown if times), default=np.inf)
        if not any(p.at >= started for p in presses):
            return display or None, None
        reach = press.at - self.config.delay.max_delay
        changed = [j for j, times in enumerate(shown)
                   if times and (j not in batch.credited or batch.ends[j] is None or batch.ends[j] >= reach)]
        if not changed:  # every completion it could reach is stored and unchanged by it
            return display or None, None
        # presses before the earliest changed token credit none of them
        first = min(shown[j][0] for j in changed)
        _, rewards, masses = batch.credit([p for p in presses if p.at >= first], self.config.delay, now=press.at,
                                          only=changed)
        batch.credited.update(changed)
        return display, {batch.episode_ids[j]: (rewards[j], masses[j]) for j in changed}

    def _say(self, message: str, *, now: bool = False) -> None:
        """Queue a message for the display; ``now``: at once, even mid-completion (pause, help)."""
        with self._lock:
            self._messages.append((message, now))

    def take_presses(self) -> list[Keypress]:
        """The good/bad presses received since the last call."""
        with self._lock:
            presses, self._presses = self._presses, []
        return presses

    # ---------------------------------------------------------- display side

    def write(self, text: str) -> None:
        """Write text to the display, its lines broken between words (see :class:`Screen`)."""
        self.screen.text(text)

    def _terminal_width(self) -> int:
        """The width of the person's terminal: the display's, else the keyboard's (the display may be a pipe
        to ``tee``), else ``$COLUMNS``; 0 if none is known (a pseudo-terminal nobody sized: a program's)."""
        for stream in (self.out, self.reader):
            try:
                fd = stream.fileno() if hasattr(stream, "fileno") else stream.fd
                columns = os.get_terminal_size(fd).columns
            except (AttributeError, OSError, ValueError):
                continue
            if columns > 0:  # (a new pseudo-terminal says 0 until someone sets its size)
                return columns
        columns = os.environ.get("COLUMNS", "")
        return int(columns) if columns.isdigit() else 0

    def _flush_messages(self) -> None:
        with self._lock:
            marks, self._marks = self._marks, []
            messages = [m for m, now in self._messages if now or not self._mid_completion]
            self._messages = [(m, now) for m, now in self._messages if not (now or not self._mid_completion)]
        for mark in marks:  # inline, where the stream is: the person sees the press was taken, and about when
            self.screen.symbol(f"{_GREEN if mark == GOOD_MARK else _RED}{mark}{_RESET}")
        if messages and not self._mid_completion:
            self.screen.end_line()  # a completion's line ends before its hints
        for message in messages:
            self.screen.paragraph(f"({message})", indent="  ", hang="   ")

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
        summary_note: Callable[[StreamResult], str] | None = None,
    ) -> StreamResult:
        """Show each completion token by token, then credit the keypresses to the tokens.

        Args:
            prompts, completions, completion_ids, tokens: the episodes (``tokens``: each
                token decoded on its own, as the reward context gives them).
            title: shown above the first completion.
            idle: called while waiting between tokens (Ĥ trains there).
            summary_note: called with the result before the batch's summary line is written;
                what it returns ends that line (the live source adds Ĥ's agreement).

        Returns:
            The credited rewards per completion; the person may have quit part-way.
        """
        cfg = self.config
        n = len(completions)
        episode_ids: list[int | None] = [None] * n
        shown: list[int] = []
        batch = _Batch()
        with self._batch_lock:
            self._batch = batch
        if title:
            self.screen.blank_line()
            self.screen.paragraph(title)
            self.screen.paragraph(HELP, style=_DIM)
        try:
            for i in range(n):
                if self.quit.is_set():
                    break
                episode_ids[i] = self.store.add_episode(
                    self.session_id, prompts[i], completions[i], completion_ids[i], tokens[i]
                )
                with self._batch_lock:
                    shown_at = batch.add(episode_ids[i], len(completion_ids[i]))
                self.current_episode = episode_ids[i]
                self.screen.blank_line()
                self.screen.text(f"[{i + 1}/{n}] {printable(shortened(prompts[i]))}", style=_DIM)
                self.screen.text(" ")
                self.screen.symbol(COMPLETION_START)
                self._mid_completion = True
                shown_text, end = printable("".join(tokens[i])), 0  # to place each word whole (ahead= below)
                step = 1.0 / cfg.pace
                next_time = time.time() + step
                for piece in tokens[i]:
                    next_time += self.wait(next_time, idle)
                    if self.quit.is_set():
                        break
                    shown_at.append(time.time())  # a list append: safe while the reader thread copies it
                    end += len(piece)  # (printable() maps each character to one)
                    self.screen.text(printable(piece), ahead=_WORD.match(shown_text, end).group())
                    next_time = max(next_time, time.time()) + step  # behind schedule: no burst to catch up
                self.screen.symbol(COMPLETION_END)
                self._mid_completion = False
                self.wait(time.time() + (cfg.linger if i == n - 1 else cfg.gap), idle)  # (late presses: marks after ◂)
                self.screen.end_line()
                with self._batch_lock:
                    batch.ends[i] = time.time()
                    if shown_at:  # durable at once, presses or not
                        self.store.set_display_times(episode_ids[i], shown_at, batch.ends[i])
                self.current_episode = None
                shown.append(i)
            with self._batch_lock:  # the final credit: no press commits between taking the presses and this
                presses = self.take_presses()
                _, batch_rewards, batch_masses = batch.credit(presses, cfg.delay, now=time.time())
                attentive = any(p.at >= batch.started for p in presses)  # keys pressed while this was on screen
                if attentive:  # the person was watching: zeros mean "nothing to say", worth storing
                    for j in shown:
                        self.store.set_token_rewards(episode_ids[j], batch_rewards[j], batch_masses[j])
        finally:
            with self._batch_lock:
                self._batch = None
        rewards = [batch_rewards[i] if i in shown else np.zeros(len(ids)) for i, ids in enumerate(completion_ids)]
        masses = [batch_masses[i] if i in shown else np.zeros(len(ids)) for i, ids in enumerate(completion_ids)]
        result = StreamResult(shown, rewards, masses, presses, episode_ids, attentive)
        self._flush_messages()  # the marks of presses in the last moments
        note = summary_note(result) if summary_note is not None else ""
        self.screen.paragraph(f"{batch_summary(result)}{note}", indent="  ", hang="  ", style=_DIM)
        return result


def batch_summary(result: StreamResult) -> str:
    """One line on a streamed batch: the presses and how many tokens they were credited to.

    Example:
        ``3 presses (2 ▲ good, 1 ▼ bad) credited to 41 tokens of 2 completions``
    """
    good = sum(p.value > 0 for p in result.presses)
    tokens = sum(int(np.count_nonzero(result.masses[i] > 0)) for i in result.shown)
    return (f"{len(result.presses)} press{'' if len(result.presses) == 1 else 'es'} ({good} {GOOD_MARK} good, "
            f"{len(result.presses) - good} {BAD_MARK} bad) credited to {tokens} tokens of {len(result.shown)} "
            f"completion{'' if len(result.shown) == 1 else 's'}")


def printable(piece: str) -> str:
    """A token as it may safely go to a terminal: control characters as their visible pictures (␛, ␉)."""
    return "".join(
        ch if ch == "\n" or (ch >= " " and ch != "\x7f") else chr(0x2400 + (ord(ch) if ch != "\x7f" else 0x21))
        for ch in piece
    )
