"""Shared fixtures: a byte tokenizer and a tiny task that need no files."""

from __future__ import annotations

import pytest
from transformers import ByT5Tokenizer

import textenv
from textenv import plugin_manager

PROMPTS = ["hello", "the movie was", "a"]


@pytest.fixture(scope="session")
def byte_tokenizer():
    """ByT5's byte tokenizer: 384 ids (3 special, 256 bytes, 125 extra), EOS = 1, pad = 0."""
    return ByT5Tokenizer()


@pytest.fixture
def tiny_options(byte_tokenizer):
    """Env options for a fast byte-level task."""
    return dict(tokenizer=byte_tokenizer, model=None, prompts=PROMPTS, max_new_tokens=6,
                reward="sentiment + 0.5*length(target=3)")


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-ins only (no entry points)."""
    return textenv.make_plugin_manager(autoload=False)


@pytest.fixture
def fresh_default_pm(monkeypatch):
    """Give the test its own process-wide manager, so decorator registrations don't leak."""
    monkeypatch.setattr(plugin_manager, "_default", textenv.make_plugin_manager(autoload=False))
    return plugin_manager.get_plugin_manager()


@pytest.fixture(scope="session")
def byte_id(byte_tokenizer):
    """The token id of a single ASCII character."""
    return lambda char: byte_tokenizer(char, add_special_tokens=False)["input_ids"][0]
