"""The plugin manager: built-ins, plugins in tests, the decorator, entry points, broken plugins."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import gymnasium as gym
import pytest
from installed_plugins import POLITENESS_PLUGIN, make_distribution

import textenv
from textenv import cli
from textenv.plugin_manager import PluginError, make_plugin_manager
from textenv.rewards import RewardError, RewardPipeline

BUILTIN_SOURCES = [
    "human", "keyword", "length", "repetition", "reward_model", "reward_model_disagreement", "sentiment",
    "sentiment_dense",
]


def test_builtins_are_plugins_of_the_same_manager(pm):
    sources = pm.reward_sources()
    assert list(sources) == BUILTIN_SOURCES
    assert {s.origin for s in sources.values()} == {"built-in"}
    assert all(s.description for s in sources.values())
    assert pm.get_reward_source("python:textenv.plugins.length:length").fn.__name__ == "length"


def test_a_plugin_class_adds_sources_and_prompt_sets(pm):
    class Shouting:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            return [textenv.RewardSource("shout", lambda completions: [c.count("!") for c in completions])]

        @textenv.hookimpl
        def textenv_prompt_sets(self):
            return {"greetings": ["hi", "hello"]}

    pm.register_plugin(Shouting(), "shouting", "test")
    assert pm.reward_sources()["shout"].origin == "test"
    assert pm.prompt_sets()["greetings"] == ["hi", "hello"]
    batch = RewardPipeline.from_spec("shout", pm)(["p"], ["wow!!"], [[1]], [True])
    assert batch.total.tolist() == [2.0]


def test_a_plugin_that_raises_is_named(pm):
    class Broken:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            raise KeyError("missing config")

    pm.register_plugin(Broken(), "broken-plugin", "entry point 'broken' (brokenpkg 0.1)")
    with pytest.raises(PluginError, match=r"plugin 'broken-plugin' \(entry point 'broken' \(brokenpkg 0.1\)\) "
                                          r"failed in textenv_reward_sources: KeyError"):
        pm.reward_sources()


def test_a_hook_typo_or_a_wrong_return_is_named(pm):
    class Typo:
        @textenv.hookimpl
        def textenv_reward_source(self):  # missing s
            return []

    with pytest.raises(PluginError, match=r"plugin 'typo' \(test\) is invalid.*textenv_reward_source"):
        pm.register_plugin(Typo(), "typo", "test")

    class WrongType:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            return [lambda completions: [0.0]]

    pm.register_plugin(WrongType(), "wrong", "test")
    with pytest.raises(PluginError, match=r"plugin 'wrong' \(test\) returned .* expected textenv.RewardSource"):
        pm.reward_sources()


def test_two_plugins_with_one_name_is_an_error(pm):
    class Again:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            return [textenv.RewardSource("sentiment", lambda completions: [0.0] * len(completions))]

    pm.register_plugin(Again(), "again", "script again.py")
    with pytest.raises(PluginError, match=r"'sentiment' is provided twice: by script again.py and by built-in"):
        pm.reward_sources()


def test_the_decorator_registers_a_script_function(fresh_default_pm, tiny_options, byte_id):
    @textenv.reward
    def exclaim(completions):
        """Counts exclamation marks."""
        return [float(c.count("!")) for c in completions]

    source = fresh_default_pm.reward_sources()["exclaim"]
    assert source.origin.startswith("script ") and "test_plugins.py:" in source.origin
    assert source.description == "Counts exclamation marks."
    assert exclaim.reward_source.name == "exclaim"

    env = gym.make("textenv/TextGen-v0", **{**tiny_options, "reward": "exclaim + 0*length"})
    env.reset(seed=0)
    env.step(byte_id("!"))
    *_, info = env.step(1)
    assert info["reward_terms"]["exclaim"] == 1.0

    with pytest.raises(PluginError, match="'length' is provided twice"):
        textenv.reward(name="length")(lambda completions: [0.0])
    assert "script:length" not in dict(fresh_default_pm.list_name_plugin())


def test_python_function_source(pm, tmp_path):
    script = tmp_path / "my_rewards.py"
    script.write_text("def vowels(completions):\n    return [sum(c in 'aeiou' for c in t) for t in completions]\n")
    batch = RewardPipeline.from_spec(f"python:{script}:vowels", pm)(["p"], ["banana"], [[1]], [True])
    assert batch.total.tolist() == [3.0]
    with pytest.raises(RewardError, match="cannot import no_such_module"):
        pm.get_reward_source("python:no_such_module:fn")
    with pytest.raises(RewardError, match="has no function 'nope'"):
        pm.get_reward_source(f"python:{script}:nope")
    with pytest.raises(RewardError, match="expected python:MODULE:FUNCTION"):
        pm.get_reward_source("python:justamodule")


def test_a_hook_returning_one_source_or_a_resolver_returning_a_non_source_is_named(pm):
    class NotAList:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            return textenv.RewardSource("single", lambda completions: [0.0] * len(completions))

    pm.register_plugin(NotAList(), "not-a-list", "test")
    with pytest.raises(PluginError, match=r"plugin 'not-a-list' \(test\) returned .* expected a list of textenv"):
        pm.reward_sources()
    pm.unregister(name="not-a-list")

    class BadResolver:
        @textenv.hookimpl
        def textenv_resolve_reward_source(self, name):
            return lambda completions: [0.0]

    pm.register_plugin(BadResolver(), "bad-resolver", "test")
    with pytest.raises(PluginError, match=r"plugin 'bad-resolver' \(test\) returned .* from "
                                          r"textenv_resolve_reward_source\('anything'\); expected a textenv"):
        pm.get_reward_source("anything")


def test_a_prompt_set_offered_twice_is_an_error(pm):
    class MyReviews:
        @textenv.hookimpl
        def textenv_prompt_sets(self):
            return {"movie-reviews": ["my own review"]}

    pm.register_plugin(MyReviews(), "my-reviews", "script mine.py")
    with pytest.raises(PluginError, match=r"prompt set 'movie-reviews' is provided twice: by plugin 'my-reviews' "
                                          r"\(script mine.py\) and by plugin 'textenv.plugins.prompt_sets'"):
        pm.prompt_sets()


@pytest.mark.parametrize("prompts, message", [
    ("a string", r"its prompt set 'mine' is a str; expected a list of prompts \(strings or conversations\)"),
    ([], r"its prompt set 'mine' is empty"),
    (["fine", 3], r"its prompt set 'mine': prompt #1 is int, not a string or a list of messages: 3"),
    (None, r"its prompt set 'mine' is a NoneType; expected a list"),
])
def test_a_bad_prompt_set_is_refused_naming_its_plugin(pm, prompts, message):
    """A string set trained on one-character prompts; an empty one crashed ``textenv plugins``."""
    class Mine:
        @textenv.hookimpl
        def textenv_prompt_sets(self):
            return {"mine": prompts}

    pm.register_plugin(Mine(), "mine-plugin", "script mine.py")
    with pytest.raises(PluginError, match=r"^plugin 'mine-plugin' \(script mine.py\) returned a bad prompt set: "
                                          + message):
        pm.prompt_sets()


def test_textenv_plugins_says_an_empty_prompt_set_in_one_line(fresh_default_pm, capsys):
    class Empty:
        @textenv.hookimpl
        def textenv_prompt_sets(self):
            return {"nothing": []}

    fresh_default_pm.register_plugin(Empty(), "empty-sets", "test")
    assert cli.main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err == "textenv: error: plugin 'empty-sets' (test) returned a bad prompt set: its prompt set 'nothing' " \
                  "is empty\n"


def test_python_function_file_with_a_dataclass_and_postponed_annotations(pm, tmp_path):
    script = tmp_path / "dataclass_rewards.py"
    script.write_text(textwrap.dedent("""
        from __future__ import annotations

        from dataclasses import dataclass

        @dataclass
        class Weight:
            value: float

        def weighted(completions):
            return [Weight(2.0).value * len(c) for c in completions]
    """))
    batch = RewardPipeline.from_spec(f"python:{script}:weighted", pm)(["p"], ["abc"], [[1]], [True])
    assert batch.total.tolist() == [6.0]


def test_python_function_file_that_fails_to_import_is_named(pm, tmp_path):
    script = tmp_path / "broken_rewards.py"
    script.write_text("1 / 0\n\ndef fn(completions):\n    return [0.0] * len(completions)\n")
    with pytest.raises(RewardError, match=rf"importing {re.escape(str(script))} failed: ZeroDivisionError"):
        pm.get_reward_source(f"python:{script}:fn")
    assert "textenv_user_broken_rewards" not in sys.modules


# ------------------------------------------------------------------ entry points


def test_an_installed_entry_point_is_loaded(tmp_path, monkeypatch):
    make_distribution(tmp_path, body=POLITENESS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = make_plugin_manager(autoload=True).reward_sources()["politeness"]
    assert source.origin == "entry point 'demo' (textenv-demo-plugin 1.0)"
    monkeypatch.setenv("TEXTENV_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "politeness" not in make_plugin_manager().reward_sources()


def test_two_distributions_may_give_an_entry_point_the_same_name(tmp_path, monkeypatch):
    make_distribution(tmp_path, body=POLITENESS_PLUGIN)
    make_distribution(tmp_path, body=POLITENESS_PLUGIN.replace("politeness", "courtesy"), name="textenv-other-plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    sources = make_plugin_manager(autoload=True).reward_sources()
    assert sources["politeness"].origin == "entry point 'demo' (textenv-demo-plugin 1.0)"
    assert sources["courtesy"].origin == "entry point 'demo' (textenv-other-plugin 1.0)"


def test_an_entry_point_that_fails_to_import_is_named(tmp_path, monkeypatch):
    make_distribution(tmp_path, body="import no_such_dependency\n", name="textenv-broken-plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'demo' from textenv-broken-plugin 1.0 failed to load "
                                          r"\(textenv_broken_plugin\): ModuleNotFoundError"):
        make_plugin_manager(autoload=True)


def test_cli_lists_the_critics_and_an_installed_plugin(tmp_path):
    make_distribution(tmp_path, body=POLITENESS_PLUGIN)
    out = subprocess.run(
        [sys.executable, "-m", "textenv.cli", "plugins"], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    ).stdout
    for name in [*BUILTIN_SOURCES, "python:MODULE:FUNCTION", "politeness", "movie-reviews"]:
        assert name in out
    assert "from entry point 'demo' (textenv-demo-plugin 1.0)" in out
    assert "from built-in" in out


def test_dense_sentiment_pays_each_token_the_sentiment_it_added(pm):
    pieces = [["The", " film", " was", " wonderful", " and", " awful"], ["meh"]]
    batch = RewardPipeline.from_spec("sentiment_dense + sentiment", pm)(
        ["p", "p"], ["".join(p) for p in pieces], [[1] * len(p) for p in pieces], [True, True], tokens=pieces
    )
    first = batch.token_rewards[0]  # (6,)
    assert first[:3].tolist() == [0.0, 0.0, 0.0] and first[3] > 0.5 and first[5] < 0  # "wonderful" up, "awful" down
    assert batch.raw_terms["sentiment_dense"] == pytest.approx(batch.raw_terms["sentiment"])  # sums to the score
