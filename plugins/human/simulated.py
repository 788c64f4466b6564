"""A simulated human for tests and benchmarks: reads the terminal, judges, presses keys late and noisily.

:class:`SimulatedHuman` sits on the master side of a pseudo-terminal. The program
under test uses the slave side exactly as it would a person's terminal (the same
:class:`~textenv.plugins.human.terminal.KeyReader`, cbreak mode and all): it writes the
display there, and reads keys from there. The simulated human reads the display as
it appears, judges each word of a completion with a scripted critic (and the whole
completion when it ends), and answers with keypresses after a human-like reaction
delay, sometimes missing a judgement and sometimes pressing the wrong key.

Example::

    with SimulatedHuman(VaderCritic(), seed=0) as person:
        reward = f"human(tty='{person.tty_path}', pace=40, min_delay=0.02, max_delay=0.4)"
        ...                                    # train; person.presses counts the keys sent

:class:`SimulatedJudge` is the same person answering the questions about whole completions
(a rating, an A/B choice, the best and worst of K) with the same critic and noise, without a
terminal: it returns the answer and the person-seconds it took, for benchmarks that count
what a person's time buys.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import heapq
import os
import pty
import re
import select
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from textenv.plugins.human.stream import BAD_MARK, COMPLETION_END, COMPLETION_START, DEFAULT_STRENGTH, GOOD_MARK

if TYPE_CHECKING:
    from typing_extensions import Self

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WORD = re.compile(r"[A-Za-z']+")


class Critic(Protocol):
    """What the simulated human thinks: a score per word and per whole completion (0: no opinion)."""

    def word(self, word: str) -> float: ...

    def completion(self, text: str) -> float: ...


@dataclass(frozen=True, kw_only=True)
class VaderCritic:
    """Judges with VADER: a word by its lexicon valence / 4, a completion by its compound score."""

    target: str = "positive"
    """``"negative"`` flips every judgement."""

    def word(self, word: str) -> float:
        return self._sign * _vader().lexicon.get(word.lower(), 0.0) / 4.0

    def completion(self, text: str) -> float:
        return self._sign * _vader().polarity_scores(text)["compound"]

    @property
    def _sign(self) -> float:
        return 1.0 if self.target == "positive" else -1.0


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@dataclass(frozen=True, kw_only=True)
class HumanModel:
    """How the simulated person behaves."""

    reaction_min: float = 0.3
    """Shortest reaction delay (s) from seeing a word to pressing."""
    reaction_max: float = 1.5
    """Longest reaction delay (s)."""
    word_threshold: float = 0.25
    """Judge a word only when its |score| reaches this (VADER: valence 1.0)."""
    completion_threshold: float = 0.3
    """Judge a finished completion only when its |score| reaches this."""
    miss: float = 0.1
    """Probability of not pressing at all for a judgement."""
    flip: float = 0.05
    """Probability of pressing the opposite key."""

    def scaled(self, factor: float) -> HumanModel:
        """The same person on a time axis ``factor`` times faster (fast benchmark replays)."""
        return HumanModel(reaction_min=self.reaction_min / factor, reaction_max=self.reaction_max / factor,
                          word_threshold=self.word_threshold, completion_threshold=self.completion_threshold,
                          miss=self.miss, flip=self.flip)


def is_word_char(ch: str) -> bool:
    """Whether the simulated person reads ``ch`` as part of a word (letters and apostrophes); any other
    character ends the word, which the person then judges."""
    return ch.isalpha() or ch == "'"


def token_judgements(tokens: Sequence[str], critic: Critic, behaviour: HumanModel = HumanModel()) -> np.ndarray:
    """What the simulated person thinks of each token of a completion: the word judgements it reacts to.

    The completion is read as :class:`SimulatedHuman` reads it (the same word characters); a
    word's score counts only where the person would react to it (``|score| >= word_threshold``)
    and goes to every token holding part of that word (a token holding parts of several judged
    words takes the strongest). The judgement of the whole completion, which the person presses
    for after its end, is no token's. This is the target a model of the person's per-token
    reinforcement (Ĥ) is measured against: a benchmark can score held-out completions without
    replaying presses.

    Args:
        tokens: the completion's tokens, each decoded on its own (as the display shows them).
        critic: what the person thinks of words.
        behaviour: the person's reaction threshold.

    Returns:
        (T,) one score per token; 0 where the person has no word to react to.
    """
    judged = np.zeros(len(tokens))
    owner = [k for k, piece in enumerate(tokens) for _ in piece]  # the token of each character
    text = "".join(tokens)
    start = None
    for i, ch in enumerate([*text, " "]):  # a trailing non-word character ends the last word, as the ◂ does
        if is_word_char(ch):
            start = i if start is None else start
            continue
        if start is not None:
            score = critic.word(text[start:i])
            if abs(score) >= behaviour.word_threshold:
                for k in sorted(set(owner[start:i])):
                    if abs(score) > abs(judged[k]):
                        judged[k] = score
            start = None
    return judged


class SimulatedHuman:
    """A person simulated on the master side of a pseudo-terminal.

    Args:
        critic: what the person thinks of words and completions.
        behaviour: reaction delays and noise.
        seed: seeds the delays and the noise.
        master_fd: drive an existing pty master (e.g. a child made by ``pty.fork``);
            by default a new pty pair is opened and :attr:`tty_path` names its slave.
        judge: whether to judge what is shown (False: only type what :meth:`type` is given).
    """

    def __init__(self, critic: Critic | None = None, *, behaviour: HumanModel = HumanModel(), seed: int = 0,
                 master_fd: int | None = None, judge: bool = True):
        self.critic = critic or VaderCritic()
        self.behaviour = behaviour
        self.rng = np.random.default_rng(seed)
        self.judge = judge
        self._slave_fd = None
        if master_fd is None:
            master_fd, self._slave_fd = pty.openpty()
        self.master_fd = master_fd
        self.tty_path = os.ttyname(self._slave_fd) if self._slave_fd is not None else None
        self.presses = 0
        self.judgements: list[tuple[str, float]] = []
        self.screen: list[str] = []
        self._pending: list[tuple[float, int, bytes]] = []  # heap of (due time, order, bytes)
        self._order = 0
        self._lock = threading.Lock()
        self._in_completion = False
        self._word = ""
        self._completion = ""
        self._stop = threading.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks split characters
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifetime

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start reading the screen and pressing keys in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="simulated-human", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop, and close the pty this object opened."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self._slave_fd is not None:
            for fd in (self.master_fd, self._slave_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._slave_fd = None

    # ------------------------------------------------------------------ acting

    @property
    def pending(self) -> int:
        """Keypresses decided on but not yet typed (the reaction delay has not passed)."""
        with self._lock:
            return len(self._pending)

    def type(self, keys: str | bytes, *, at: float | None = None) -> None:
        """Type keys (at wall time ``at``, or now): ``"g"``, ``"\\x1b[A"`` (up) ..."""
        self._schedule(at if at is not None else time.time(), keys.encode() if isinstance(keys, str) else keys)

    def _schedule(self, due: float, data: bytes) -> None:
        with self._lock:
            heapq.heappush(self._pending, (due, self._order, data))
            self._order += 1

    def _react(self, score: float, what: str) -> None:
        """Decide whether and how to press for a judgement, and schedule it."""
        b = self.behaviour
        self.judgements.append((what, score))
        if self.rng.random() < b.miss:
            return
        good = score > 0
        if self.rng.random() < b.flip:
            good = not good
        level = int(np.clip(round(abs(score) * 2 * DEFAULT_STRENGTH), 1, 9))
        delay = self.rng.uniform(b.reaction_min, b.reaction_max)
        self._schedule(time.time() + delay, f"{level}{'g' if good else 'b'}".encode())

    def _see(self, text: str) -> None:
        """Read newly displayed text as a person would: word by word, then the whole completion."""
        text = _ANSI.sub("", text).replace("\r", "")
        self.screen.append(text)
        if not self.judge:
            return
        b = self.behaviour
        for ch in text:
            if ch in (GOOD_MARK, BAD_MARK):  # the confirmation of a press, drawn into the stream: not the text
                continue
            if ch == COMPLETION_START:
                self._in_completion, self._word, self._completion = True, "", ""
                continue
            if not self._in_completion:
                continue
            if ch == COMPLETION_END:
                self._end_word()
                self._in_completion = False
                score = self.critic.completion(self._completion)
                if abs(score) >= b.completion_threshold:
                    self._react(score, self._completion)
                continue
            self._completion += ch
            if is_word_char(ch):
                self._word += ch
            else:
                self._end_word()

    def _end_word(self) -> None:
        if self._word:
            score = self.critic.word(self._word)
            if abs(score) >= self.behaviour.word_threshold:
                self._react(score, self._word)
        self._word = ""

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = self._pending[0][0] if self._pending else None
            timeout = 0.05 if due is None else max(0.0, min(0.05, due - time.time()))
            try:
                ready, _, _ = select.select([self.master_fd], [], [], timeout)
            except (OSError, ValueError):
                return
            if ready:
                try:
                    data = os.read(self.master_fd, 4096)
                except OSError:  # the other side closed
                    return
                if not data:
                    return
                self._see(self._decoder.decode(data))
            now = time.time()
            while True:
                with self._lock:
                    if not self._pending or self._pending[0][0] > now:
                        break
                    _, _, keys = heapq.heappop(self._pending)
                try:
                    os.write(self.master_fd, keys)
                except OSError:
                    return
                self.presses += keys.count(b"g") + keys.count(b"b")


TIE_GAP = 0.05
"""Completions whose critic scores differ by less than this look alike to the simulated person."""


@dataclass
class SimulatedJudge:
    """How the simulated person answers questions about whole completions, and what each answer costs.

    The judgement is the critic's score of each whole completion. The noise is the
    :class:`HumanModel`'s: a miss skips the question; a wrong key gives a random rating, the
    other completion of an A/B pair, or a random other one as the best (or the worst). The cost
    is reading every token shown at ``pace`` tokens per second, plus a decision delay drawn
    from the reaction range. One random stream (``rng``) draws all of it, in a fixed order per
    question, so a seed replays the same answers.

    Example::

        judge = SimulatedJudge(VaderCritic(), pace=4.0, rng=np.random.default_rng(0))
        key, seconds = judge.rate("What a lovely film.", n_tokens=6)            # "5", 1.5 + decision
        best, worst, seconds = judge.best_of(texts, n_tokens=sum(lengths))      # indices into texts

    Args:
        critic: what the person thinks of a completion (:meth:`Critic.completion`).
        pace: tokens the person reads per second.
        rng: the random stream of decisions and noise.
        behaviour: the decision delay's range and the miss and wrong-key probabilities.
        tie_gap: scores closer than this look alike (an A/B tie; nothing to pick among K).
        scale: ratings go from 1 to this.
    """

    critic: Critic
    pace: float = 4.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    behaviour: HumanModel = HumanModel()
    tie_gap: float = TIE_GAP
    scale: int = 5

    def __post_init__(self) -> None:
        if not self.pace > 0:
            raise ValueError(f"pace is the tokens read per second and must be > 0, got {self.pace}")
        if not 2 <= self.scale <= 9:
            raise ValueError(f"scale is the highest rating, 2 to 9 (one key each), got {self.scale}")

    def rate(self, text: str, n_tokens: int) -> tuple[str, float]:
        """A rating question: the key pressed (``"1"`` .. the scale, or ``"s"``) and the person-seconds.

        The rating maps the score's [-1, 1] linearly onto 1..scale (``round(3 + 2 * score)`` on 1-5).
        """
        seconds = self._seconds(n_tokens)
        noise = self._noise()
        if noise == "miss":
            return "s", seconds
        middle, half = (self.scale + 1) / 2, (self.scale - 1) / 2
        rating = int(np.clip(round(middle + half * self.critic.completion(text)), 1, self.scale))
        return str(int(self.rng.integers(1, self.scale + 1)) if noise == "flip" else rating), seconds

    def compare(self, a: str, b: str, n_tokens: int) -> tuple[str, float]:
        """An A/B question: the key (``"a"``, ``"b"``, ``"t"`` tie or ``"s"`` skip) and the person-seconds.

        ``n_tokens`` counts both completions' tokens (both are read).
        """
        seconds = self._seconds(n_tokens)
        noise = self._noise()
        if noise == "miss":
            return "s", seconds
        gap = self.critic.completion(a) - self.critic.completion(b)
        if abs(gap) < self.tie_gap:
            return "t", seconds
        better = "a" if gap > 0 else "b"
        return ({"a": "b", "b": "a"}[better] if noise == "flip" else better), seconds

    def best_of(self, texts: Sequence[str], n_tokens: int) -> tuple[int | None, int | None, float]:
        """A best-of-K question: the best's index, the worst's index, and the person-seconds.

        The best is the highest-scored completion; the question is skipped (``None, None``) on
        a miss, or when all K look alike (scores within ``tie_gap``). The worst is the
        lowest-scored of the others, given only when K >= 3 and it stands out (``tie_gap``
        below every other one but the best); otherwise ``None``, as a person skips the
        optional second key when unsure. A wrong key makes either answer a random other one.

        Args:
            texts: the K completions, in the order shown.
            n_tokens: their tokens together (all K are read).

        Returns:
            ``(best, worst, seconds)``; indices into ``texts``, ``None`` where not given.
        """
        if len(texts) < 2:
            raise ValueError(f"best_of needs at least 2 completions to choose among, got {len(texts)}")
        seconds = self._seconds(n_tokens)
        noise = self._noise()
        scores = np.array([self.critic.completion(t) for t in texts])
        if noise == "miss" or scores.max() - scores.min() < self.tie_gap:
            return None, None, seconds
        best = int(np.argmax(scores))
        if noise == "flip":
            best = self._any_but(len(texts), best)
        return best, self._worst(scores, best), seconds

    def _worst(self, scores: np.ndarray, best: int) -> int | None:
        """The worst of the completions but ``best``, when it stands out (a wrong key: another of them)."""
        rest = sorted((k for k in range(len(scores)) if k != best), key=lambda k: scores[k])
        if len(rest) < 2:  # K = 2: the best's answer already says which is worse
            return None
        worst, runner_up = rest[0], rest[1]
        if scores[runner_up] - scores[worst] < self.tie_gap:
            return None
        if self.rng.random() < self.behaviour.flip:
            return int(self.rng.choice(rest[1:]))
        return worst

    def _any_but(self, n: int, k: int) -> int:
        """A uniformly random index of ``range(n)`` other than ``k``."""
        return int(self.rng.choice([i for i in range(n) if i != k]))

    def _seconds(self, n_tokens: int) -> float:
        """Reading ``n_tokens`` at the pace, then deciding (a delay in the reaction range)."""
        b = self.behaviour
        return n_tokens / self.pace + float(self.rng.uniform(b.reaction_min, b.reaction_max))

    def _noise(self) -> str | None:
        """``"miss"`` (no answer), ``"flip"`` (a wrong key) or None (the answer the person meant)."""
        if self.rng.random() < self.behaviour.miss:
            return "miss"
        return "flip" if self.rng.random() < self.behaviour.flip else None
