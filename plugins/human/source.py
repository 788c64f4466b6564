"""``human``: live TAMER feedback from a person at the terminal, as per-token rewards.

While training, each batch's completions stream to the terminal at a readable pace;
the person presses ↑/+/g (good) or ↓/-/b (bad) at any moment, 1-9 for strength,
space to pause, q to quit, ? for help. Each keypress is committed to a SQLite store
at once and credited to the tokens shown 0.2–4 s before it; Ĥ, a small model of the
person's feedback, learns online and stands in where they are silent. Options:
see :class:`textenv.plugins.human.live.HumanOptions`, e.g. ``human(db=run/feedback.db, pace=6)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from textenv.plugin_manager import hookimpl
from textenv.plugins.human.terminal import TerminalError, check_terminal
from textenv.rewards import RewardSource


class HumanSource(RewardSource):
    """The ``human`` source, which checks for a terminal when a reward pipeline is built.

    The source itself first runs when a batch of completions is finished, after the model has
    loaded and the first rollout is sampled: too late to learn that stdin is a pipe.
    """

    interactive = True  # the completions stream to the person's terminal: no trainer's bar may print there

    def bind(self, options: Mapping[str, Any]) -> Callable[[dict[str, Any]], Any]:
        """Bind the options (see :meth:`RewardSource.bind`), then check the terminal they name.

        Raises:
            RewardError: an option the source does not accept.
            TerminalError: stdin (or ``tty=``) is not a terminal.
        """
        call = super().bind(options)
        tty = options.get("tty")
        try:
            check_terminal(None if tty is None else str(tty))
        except TerminalError as exc:
            raise TerminalError(f"reward source 'human': {exc}") from None
        return call


def human(
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]],
    tokens: list[list[str]],
    *,
    db: str = "feedback.db",
    pace: float = 4.0,
    min_delay: float = 0.2,
    max_delay: float = 4.0,
    gap: float = 0.5,
    linger: float = 1.0,
    show: int = 0,
    hhat: str | None = None,
    hhat_mix: float = 1.0,
    hhat_min_presses: int = 20,
    tty: str | None = None,
) -> list[Any]:
    """Live keypress feedback from a person at the terminal (TAMER), per token; Ĥ fills silences."""
    from textenv.plugins.human.live import HumanOptions, human_source

    options = HumanOptions(db=str(db), pace=float(pace), min_delay=float(min_delay), max_delay=float(max_delay),
                           gap=float(gap), linger=float(linger), show=int(show), hhat=hhat,
                           hhat_mix=float(hhat_mix), hhat_min_presses=int(hhat_min_presses), tty=tty)
    return human_source(options)(prompts, completions, completion_ids, tokens)


def check_options(*, db: str = "feedback.db", **_: Any) -> None:
    """Refuse a ``db=`` that is a directory, when the spec is read rather than after the first rollout.

    Raises:
        ValueError: the path is a directory.
    """
    from textenv.plugins.human.store import FeedbackStoreError, check_store_path

    try:
        check_store_path(db)
    except FeedbackStoreError as exc:
        raise ValueError(f"db=: {exc}") from None


@hookimpl
def textenv_reward_sources():
    return [HumanSource("human", human, check_options=check_options)]
