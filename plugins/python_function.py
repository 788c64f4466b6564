"""``python:MODULE:FUNCTION`` (or ``python:path/to/file.py:FUNCTION``): a user's function as a source."""

from __future__ import annotations

import importlib
import importlib.util
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
        spec = importlib.util.spec_from_file_location(f"textenv_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise RewardError(f"{name!r}: cannot import {target}: {exc}") from None
