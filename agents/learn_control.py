"""What steers :meth:`textenv.agents.PPO.learn` from outside it: the callbacks after each iteration, Ctrl-C, and
SB3's ``learn`` arguments, refused with a message that says textenv's own."""

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
    requested = False


@contextlib.contextmanager
def graceful_interrupt(say: bool = True) -> Iterator[Interrupt]:
    """First SIGINT: ask the loop to stop at the next iteration boundary; second: abort. ``say``: print that
    (the main process does, for all of them)."""
    state = Interrupt()

    def handler(signum, frame):
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        if say:
            print("\nCtrl-C: finishing this iteration, then saving a checkpoint (press again to abort)", flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no graceful stop
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
