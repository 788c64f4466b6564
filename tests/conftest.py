"""Shared fixtures: a byte tokenizer and a tiny task that need no files."""

from __future__ import annotations

import string

import pytest
import torch
from transformers import ByT5Tokenizer

import textenv
from textenv import plugin_manager

PROMPTS = ["hello", "the movie was", "a"]


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread; the default model's (slow) tests keep them all."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def lowercase_critic():
    """A dense trivial critic for learning tests: the share of 8 completion positions holding a lowercase letter."""

    @textenv.reward(name="lowercase_share")
    def lowercase_share(completions):
        return [sum(ch in string.ascii_lowercase for ch in text) / 8 for text in completions]

    yield "lowercase_share"
    textenv.unregister_reward("lowercase_share")
