"""MkDocs hook: lay out the installed package tree for mkdocstrings before it reads the sources.

textenv installs ``plugins/`` as ``textenv.plugins`` and ``agents/`` as ``textenv.agents``
(setuptools' package-dir mapping). mkdocstrings reads the sources statically, which is what
keeps attribute docstrings such as PPOConfig's fields, and it finds ``textenv.agents`` only
where it sits under ``textenv/``. So the build links the tree as it is installed into
``build/api-src/textenv`` (links, not copies: nothing to go stale) and mkdocs.yml points
mkdocstrings there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "build" / "api-src"
MAPPED = {"plugins": "plugins", "agents": "agents"}
"""``textenv.<key>`` lives in the repository's ``<value>/`` (pyproject's package-dir)."""


def on_startup(command, dirty):
    """Before any plugin's ``on_config``: mkdocstrings' handler keeps only the search paths that exist."""
    package = TREE / "textenv"
    shutil.rmtree(TREE, ignore_errors=True)
    package.mkdir(parents=True)
    for entry in (ROOT / "textenv").iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, package / entry.name)
    for name, folder in MAPPED.items():
        os.symlink(ROOT / folder, package / name)
