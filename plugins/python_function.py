"""``python:MODULE:FUNCTION`` (or ``python:path/to/file.py:FUNCTION``): a user's function as a source."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from textenv.plugin_manager import hookimpl
from textenv.rewards import RewardError, RewardSource

PREFIX = "python:"


@hookimpl
def textenv_resolve_reward_source(name):
    if not name.startswith(PREFIX):
        return None
    target, sep, attr = name[len(PREFIX) :].rpartition(":")
    if not sep or not target or not attr:
        raise RewardError(f"{name!r}: expected python:MODULE:FUNCTION or python:FILE.py:FUNCTION")
    module = _load_module(name, target)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"{name!r}: {target} has no function {attr!r}")
    return RewardSource(name, fn, origin=f"python function {target}:{attr}")


def _load_module(name: str, target: str):
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise RewardError(f"{name!r}: no such file {path}")
        return _exec_file(name, path)
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise RewardError(f"{name!r}: cannot import {target}: {exc}") from None
    except Exception as exc:
        raise RewardError(f"{name!r}: importing {target} failed: {type(exc).__name__}: {exc}") from exc


def _exec_file(name: str, path: Path):
    """Import ``path`` as module ``textenv_user_<stem>``, registered in ``sys.modules`` as a normal import is.

    Registering before executing lets the file's own code look itself up (``@dataclass``
    with ``from __future__ import annotations`` does).

    Raises:
        RewardError: the file raised while being imported; the message names the file.
    """
    spec = importlib.util.spec_from_file_location(f"textenv_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(spec.name)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        if previous is None:
            sys.modules.pop(spec.name, None)
        else:
            sys.modules[spec.name] = previous
        raise RewardError(f"{name!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module
