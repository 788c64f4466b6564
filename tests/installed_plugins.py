"""Throwaway installed distributions with a textenv entry point, for the plugin-loading tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

POLITENESS_PLUGIN = """
    import textenv

    def politeness(completions):
        '''1 when the completion says please.'''
        return [float("please" in c.lower()) for c in completions]

    @textenv.hookimpl
    def textenv_reward_sources():
        return [textenv.RewardSource("politeness", politeness)]
"""
"""A plugin module's source: one reward source, ``politeness``."""


def make_distribution(root: Path, *, body: str, name: str = "textenv-demo-plugin", entry: str = "demo") -> None:
    """A distribution "installed" in ``root`` (put it on sys.path): its module and a dist-info with a textenv
    entry point."""
    module = name.replace("-", "_")
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[textenv]\n{entry} = {module}\n")
