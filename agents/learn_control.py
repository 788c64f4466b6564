"""What steers :meth:`textenv.agents.PPO.learn` from outside it: the callbacks after each iteration, Ctrl-C and a
person's stop, and SB3's ``learn`` arguments, refused with a message that says textenv's own."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

IterationCallback = Callable[[Any, dict[str, float]], "bool | None"]
"""``callback(agent, stats)`` after each iteration of :meth:`PPO.learn`; ``False`` stops training."""


def callbacks(callback: Any) -> list[IterationCallback]:
    """``learn``'s callback argument as a list, refusing what it cannot call."""
    callbacks = [] if callback is None else [callback] if not isinstance(callback, (list, tuple)) else list(callback)
    for cb in callbacks:
        if isinstance(cb, BaseCallback) or not callable(cb):
            raise TypeError(
                f"learn(callback=...) takes callables called as callback(agent, stats) after each iteration "
                f"(return False to stop), or a list of them; got {type(cb).__name__}"
                + (" (an SB3 BaseCallback needs an SB3 algorithm: wrap it in a function)"
                   if isinstance(cb, BaseCallback) else "")
            )
    return callbacks


def refuse_sb3_arguments(arguments: dict[str, Any]) -> None:
    """A TypeError for SB3's ``learn`` arguments (or any other unknown one) that says textenv's own."""
    if not arguments:
        return
    name = next(iter(arguments))
    ours = {"total_timesteps": "total_episodes", "reset_num_timesteps": "reset_num_episodes"}.get(name)
    if ours is None:
        raise TypeError(f"PPO.learn() got an unexpected keyword argument {name!r}")
    raise TypeError(f"PPO.learn() counts episodes, not timesteps: give {ours}= instead of {name}= (an episode is one "
                    "completion of up to max_new_tokens tokens, one per action, so timesteps per episode vary)")


class Interrupt:
    """Whether :meth:`PPO.learn` was asked to stop after the current iteration, and by whom."""

    requested = False
    stopped_by: str | None = None
    """Who asked, when it was not a Ctrl-C (``"you pressed q"``): a stop of theirs, not an interruption."""

    def report(self, iteration: int) -> tuple[str, str]:
        """What the stop after ``iteration`` is, and the words before its checkpoint's path (for the last line)."""
        if self.stopped_by is None:
            return f"interrupted after iteration {iteration}", "checkpoint in"
        return f"{self.stopped_by}: training stopped after iteration {iteration}", "checkpoint written to"


class GracefulStop:
    """The SIGINT handler of :func:`graceful_interrupt`: a first Ctrl-C asks the loop to stop at the next iteration
    boundary, a second raises ``KeyboardInterrupt``.

    It also takes a stop that is no Ctrl-C, :meth:`request_stop`: a reward source that talks to a person at the
    terminal (``human``, whose ``q`` means "stop giving feedback") finds it with ``signal.getsignal(SIGINT)``,
    since a plugin imports no agent, and the person's stop is then said, and ends ``textenv train``, as theirs.
    """

    def __init__(self, state: Interrupt, say: bool):
        self.state, self.say = state, say

    def __call__(self, signum: int, frame: Any) -> None:
        if self.state.requested:
            raise KeyboardInterrupt
        self.state.requested = True
        if self.say:
            print("\nCtrl-C: finishing this iteration, then saving a checkpoint (press again to abort)", flush=True)

    def request_stop(self, who: str) -> None:
        """Stop after this iteration, as a first Ctrl-C does, at someone's request (said as theirs).

        Args:
            who: who asks, as the messages open with it: ``"you pressed q"``.
        """
        if self.state.requested:  # a Ctrl-C (or another request) came first: that stop stands
            return
        self.state.requested, self.state.stopped_by = True, who
        if self.say:
            print(f"\n{who}: finishing this iteration, then saving a checkpoint (Ctrl-C aborts at once)", flush=True)


@contextlib.contextmanager
def graceful_interrupt(say: bool = True) -> Iterator[Interrupt]:
    """First SIGINT: ask the loop to stop at the next iteration boundary; second: abort (:class:`GracefulStop`).
    ``say``: print that (the main process does, for all of them)."""
    state = Interrupt()
    try:
        previous = signal.signal(signal.SIGINT, GracefulStop(state, say))
    except ValueError:  # not the main thread: no graceful stop
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
