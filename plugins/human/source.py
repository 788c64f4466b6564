"""``human``: live TAMER feedback from a person at the terminal, as per-token rewards.

While training, each batch's completions stream to the terminal at a readable pace;
the person presses ↑/+/g (good) or ↓/-/b (bad) at any moment, 1-9 for strength,
space to pause, q to quit, ? for help. Each keypress is committed to a SQLite store
at once and credited to the tokens shown 0.2–4 s before it; Ĥ, a small model of the
person's feedback, learns online and stands in where they are silent. Options:
see :class:`textenv.plugins.human.live.HumanOptions`, e.g. ``human(db=run/feedback.db, pace=6)``.
"""

from __future__ import annotations

from typing import Any

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardSource


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


@hookimpl
def textenv_reward_sources():
    return [RewardSource("human", human)]
