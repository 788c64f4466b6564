"""The live human reward source behind the ``human`` plugin: stream, take keys, credit, mix in Ĥ.

One :class:`HumanFeedbackSource` per set of options lives for the whole process (a
run calls the reward source once per batch of finished episodes). On its first call
it opens the store, checks that it has a terminal and starts the key reader; every
call streams the completions at the chosen pace, credits the keypresses to the
tokens, stores everything, trains Ĥ, and returns per-token rewards:

* a token some keypress was credited to gets the person's credited reward;
* a token no keypress reached (the person was silent, away, or had quit) gets
  ``hhat_mix * Ĥ(token)``, once Ĥ has learned from ``hhat_min_presses`` keypresses
  (before that: 0).

Ĥ is saved next to the database after every batch with feedback, and on the next
start it is reloaded and its replay buffer rebuilt from the store.
"""

from __future__ import annotations

import atexit
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from textenv.plugins.human.credit import UniformDelay
from textenv.plugins.human.hhat import HHatConfig, HumanRewardModel
from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.stream import StreamConfig, StreamResult, TokenFeedback
from textenv.plugins.human.terminal import KeyReader


@dataclass(frozen=True, kw_only=True)
class HumanOptions:
    """Options of the ``human`` reward source (``human(db=run/feedback.db, pace=6)``)."""

    db: str = "feedback.db"
    """The SQLite feedback store (created if missing)."""
    pace: float = 4.0
    """Tokens shown per second."""
    min_delay: float = 0.2
    """Shortest reaction delay (s) a keypress is credited back over."""
    max_delay: float = 4.0
    """Longest reaction delay (s)."""
    gap: float = 0.5
    """Seconds between completions."""
    linger: float = 1.0
    """Seconds to wait for late keys after a batch."""
    show: int = 0
    """Show at most this many completions per call (0: all); Ĥ scores the others."""
    hhat: str | None = None
    """Where Ĥ is saved; ``<db without suffix>.hhat.safetensors`` by default."""
    hhat_mix: float = 1.0
    """Weight of Ĥ's prediction on tokens no keypress reached (0: silence is 0 reward)."""
    hhat_min_presses: int = 20
    """Keypresses Ĥ must have learned from before it stands in."""
    hhat_interval: float = 0.25
    """Seconds between Ĥ's scheduled training steps while the display waits."""
    tty: str | None = None
    """A terminal device to use instead of stdin/stdout (e.g. a pseudo-terminal's slave)."""

    @property
    def hhat_path(self) -> Path:
        """Where Ĥ is saved and reloaded."""
        if self.hhat:
            return Path(self.hhat)
        db = Path(self.db)
        return db.with_name(db.stem + ".hhat.safetensors")

    def stream_config(self) -> StreamConfig:
        """The display and credit settings."""
        return StreamConfig(pace=self.pace, delay=UniformDelay(min_delay=self.min_delay, max_delay=self.max_delay),
                            gap=self.gap, linger=self.linger)


class HumanFeedbackSource:
    """The per-process state of the ``human`` source: store, terminal, Ĥ."""

    def __init__(self, options: HumanOptions, *, mode: str = "train"):
        self.options = options
        self.config = options.stream_config()  # validates the numbers before anything opens
        self.reader = KeyReader(tty_path=options.tty)  # raises TerminalError if there is no terminal
        self.store = FeedbackStore(options.db)
        self.session_id = self.store.start_session(mode, **asdict(options))
        self.hhat = load_hhat(options.hhat_path, self.store)
        self.feedback = TokenFeedback(self.store, self.session_id, config=self.config, reader=self.reader)
        # transformers' bars ("Writing model shards" at each checkpoint, "Loading weights") would print into
        # the stream the person is reading; they are off while the session lasts
        from transformers.utils import logging as hf_logging

        self._hf_bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        self.reader.start()
        self._last_idle_step = 0.0
        self.batches = 0
        self.hhat_agreed = 0
        """Pressed tokens whose sign Ĥ predicted right before learning from them (the batch summaries' figure)."""
        self.hhat_judged = 0
        """Pressed tokens Ĥ was judged on."""
        self._quit_said = False  # the person's q is acted on once, in the call after it (it may come between calls)
        atexit.register(self.close)

    @property
    def quit(self) -> bool:
        """Whether the person pressed q (or the terminal closed): Ĥ stands in from then on."""
        return self.feedback.quit.is_set()

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        tokens: Sequence[Sequence[str]],
    ) -> list[np.ndarray]:
        """Stream the episodes, collect and credit feedback; per-token rewards for each."""
        n = len(completions)
        rewards = [np.zeros(len(ids)) for ids in completion_ids]
        masses = [np.zeros(len(ids)) for ids in completion_ids]
        if not self.quit:
            show = list(range(n if self.options.show <= 0 else min(n, self.options.show)))
            self.batches += 1
            shown_ids = [completion_ids[i] for i in show]
            result = self.feedback.stream(
                [prompts[i] for i in show], [completions[i] for i in show], shown_ids, [tokens[i] for i in show],
                title=f"── batch {self.batches}: {len(show)} of {n} completions at {self.options.pace:g} tokens/s ──",
                idle=self._idle, summary_note=lambda result: self._hhat_note(result, shown_ids),
            )
            for j, i in enumerate(show):
                rewards[i], masses[i] = result.rewards[j], result.masses[j]
            if result.attentive:
                self.hhat.observe([completion_ids[show[j]] for j in result.shown],
                                  [result.rewards[j] for j in result.shown], presses=len(result.presses))
                self.hhat.update()
                self.hhat.save(self.options.hhat_path)
        if self.options.hhat_mix and self.hhat.presses_seen >= self.options.hhat_min_presses:
            predicted = self.hhat.predict(completion_ids)
            for i in range(n):
                silent = masses[i] == 0
                rewards[i][silent] += self.options.hhat_mix * predicted[i][silent]
        if self.quit and not self._quit_said:
            self._quit_said = True
            self._on_quit()
        return rewards

    def _hhat_note(self, result: StreamResult, completion_ids: Sequence[Sequence[int]]) -> str:
        """Ĥ's agreement so far, for the batch summary: judged on this batch's pressed tokens before it learns them.

        A pressed token is one some press was credited to (mass > 0, reward != 0); Ĥ agrees when
        the sign of its prediction is the sign of the credited reward.
        """
        if self.hhat.updates and result.shown:
            predicted = self.hhat.predict([completion_ids[j] for j in result.shown])
            for j, guess in zip(result.shown, predicted):
                pressed = (result.masses[j] > 0) & (result.rewards[j] != 0)
                self.hhat_agreed += int(np.sum(np.sign(guess[pressed]) == np.sign(result.rewards[j][pressed])))
                self.hhat_judged += int(pressed.sum())
        if not self.hhat_judged:
            return " · Ĥ: learning from the first presses"
        return (f" · Ĥ agreed on {self.hhat_agreed} of {self.hhat_judged} pressed tokens so far "
                f"({100 * self.hhat_agreed / self.hhat_judged:.0f} %)")

    def _idle(self) -> None:
        """Ĥ's scheduled training: one step every ``hhat_interval`` seconds of display waiting."""
        now = time.monotonic()
        if self.hhat.buffer_len and now - self._last_idle_step >= self.options.hhat_interval:
            self._last_idle_step = now
            self.hhat.update(1)

    def _on_quit(self) -> None:
        """The person quit: say so, and ask a training loop to stop after this iteration, as their stop.

        PPO's handler of Ctrl-C (:class:`textenv.agents.learn_control.GracefulStop`) takes a stop that is no
        Ctrl-C, said as the person's; another loop's graceful handler gets a first Ctrl-C, as before.
        """
        self.feedback.screen.paragraph("(feedback ended: Ĥ stands in from here)")
        handler = signal.getsignal(signal.SIGINT)
        request_stop = getattr(handler, "request_stop", None)
        if callable(request_stop):
            request_stop("you pressed q")
        elif handler not in (signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL, None):
            signal.raise_signal(signal.SIGINT)  # another graceful handler: stop after this iteration

    def close(self) -> None:
        """Restore the terminal, save Ĥ, mark the session ended (at exit, or when done)."""
        self.reader.close()
        if self._hf_bars_were_on:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
        if self.hhat.updates:
            self.hhat.save(self.options.hhat_path)
        try:
            self.store.end_session(self.session_id)
            self.store.close()
        except Exception as exc:  # noqa: BLE001  (at exit: report, never raise)
            print(f"textenv: could not close {self.options.db}: {exc}", file=sys.stderr)
        atexit.unregister(self.close)
        _sources.pop(self.options, None)


_sources: dict[HumanOptions, HumanFeedbackSource] = {}


def human_source(options: HumanOptions, *, mode: str = "train") -> HumanFeedbackSource:
    """The process's live source for these options (opened on first use)."""
    if options not in _sources:
        _sources[options] = HumanFeedbackSource(options, mode=mode)
    return _sources[options]


def close_human_sources(db: str | Path | None = None) -> int:
    """Close the process's live sources (of the store ``db`` only, when given): the terminal restored, Ĥ saved,
    the session ended. A program that runs several trainings with a person in one process closes each one's source
    when its training ends, instead of at exit; the next use of the same options opens a fresh one.

    Returns:
        How many sources were closed.
    """
    closing = [s for s in list(_sources.values()) if db is None or Path(s.options.db) == Path(db)]
    for source in closing:
        source.close()
    return len(closing)


def load_hhat(path: Path, store: FeedbackStore) -> HumanRewardModel:
    """Ĥ as saved at ``path``, with the store's feedback in its buffer; rebuilt from the store when needed.

    Ĥ is a function of the stored feedback, so nothing is lost by learning it again: that is done when
    no Ĥ was saved, and when the saved one is of an earlier kind (the context network, which memorized
    its training tokens instead of generalizing) rather than the current default estimator.
    """
    saved = HumanRewardModel.load(path) if path.exists() else None
    current = saved is not None and saved.config.estimator == HHatConfig().estimator
    hhat = saved if current else HumanRewardModel()
    episodes = store.token_feedback()
    hhat.observe([ids for ids, _, _ in episodes], [r for _, r, _ in episodes])
    hhat.presses_seen = len(store.keypresses())
    if hhat.buffer_len and not current:
        hhat.update()
    return hhat
