"""Plugins add ``textenv`` subcommands through ``textenv_add_commands`` (as pytest's ``pytest_addoption``);
the core's command line names none of them, and the core imports no agent and no plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from installed_plugins import make_distribution

import textenv
from textenv import cli, plugin_manager
from textenv.plugin_manager import PluginError

CORE = Path(textenv.__file__).parent


class GreetingError(Exception):
    """The greeter's user error: printed as one line, exit status 2."""


class Greeter:
    """A third-party plugin with one command."""

    @textenv.hookimpl
    def textenv_add_commands(self, subparsers):
        p = subparsers.add_parser("greet", help="say hello to someone")
        p.add_argument("--name", default="world")
        p.set_defaults(run=self.greet)
        return [GreetingError]

    def greet(self, args):
        if not args.name:
            raise GreetingError("--name is empty")
        print(f"hello, {args.name}")


def test_a_plugin_adds_a_command_that_help_lists_and_runs(fresh_default_pm, capsys):
    fresh_default_pm.register_plugin(Greeter(), "greeter", "test")

    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    assert "say hello to someone" in capsys.readouterr().out

    assert cli.main(["greet", "--name", "Ada"]) == 0
    assert capsys.readouterr().out == "hello, Ada\n"

    assert cli.main(["greet", "--name", ""]) == 2  # its own user error, in one line
    assert capsys.readouterr().err == "textenv: error: --name is empty\n"


def test_the_builtin_commands_come_from_plugins(pm):
    parser, _ = cli.build_parser(pm)
    commands = parser._subparsers._group_actions[0].choices
    assert list(commands) == ["plugins", "demo", "export", "feedback", "rm", "sft", "train"]
    implementers = {impl.plugin_name for impl in pm.hook.textenv_add_commands.get_hookimpls()}
    assert implementers == {
        "textenv.agents.export", "textenv.agents.sft_cli", "textenv.agents.train",
        "textenv.plugins.human.cli", "textenv.plugins.reward_model.cli",
    }
    assert {pm.origins[name] for name in implementers} == {"built-in"}


def test_builtins_load_with_autoload_off(monkeypatch):
    monkeypatch.setenv("TEXTENV_DISABLE_PLUGIN_AUTOLOAD", "1")
    parser, _ = cli.build_parser(textenv.make_plugin_manager())
    assert {"train", "sft", "rm", "feedback"} <= set(parser._subparsers._group_actions[0].choices)


def test_a_command_name_already_taken_names_the_plugin(pm):
    class Copycat:
        @textenv.hookimpl
        def textenv_add_commands(self, subparsers):
            subparsers.add_parser("train")

    pm.register_plugin(Copycat(), "copycat", "test")
    with pytest.raises(PluginError, match=r"plugin 'copycat' \(test\) failed in textenv_add_commands: "
                                          r"ArgumentError: .*conflicting subparser: train"):
        cli.build_parser(pm)


def test_a_plugin_that_returns_no_exception_types_is_named(pm):
    class Sloppy:
        @textenv.hookimpl
        def textenv_add_commands(self, subparsers):
            subparsers.add_parser("sloppy")
            return ["not an exception"]

    pm.register_plugin(Sloppy(), "sloppy", "test")
    with pytest.raises(PluginError, match=r"plugin 'sloppy' \(test\) returned \['not an exception'\] from "
                                          r"textenv_add_commands; expected a list of exception types"):
        cli.build_parser(pm)


def test_a_broken_plugin_is_one_line_and_status_2(fresh_default_pm, capsys):
    class Broken:
        @textenv.hookimpl
        def textenv_add_commands(self, subparsers):
            raise RuntimeError("no parser for you")

    fresh_default_pm.register_plugin(Broken(), "broken", "test")
    assert cli.main(["plugins"]) == 2
    assert capsys.readouterr().err == (
        "textenv: error: plugin 'broken' (test) failed in textenv_add_commands: RuntimeError: no parser for you\n"
    )


def test_the_core_imports_no_agent_and_no_plugin():
    """The layout's rule, agents -> textenv <- plugins: the core loads both through the plugin manager only."""
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(CORE.parent)}:{node.lineno} {name}" for name in names
                      if name.split(".")[:2] in (["textenv", "agents"], ["textenv", "plugins"])
                      or name.split(".")[0] in ("agents", "plugins")]
    assert found == []


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["-h"]])
def test_help_works_with_a_broken_plugin_installed_and_names_it(tmp_path, monkeypatch, capsys, argv):
    """The plugins build the parser, so one that fails to import used to leave no --help at all."""
    make_distribution(tmp_path, body="import no_such_dependency\n", name="textenv-broken-plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("TEXTENV_DISABLE_PLUGIN_AUTOLOAD", "TEXTENV_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(plugin_manager, "_default", None)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: textenv{' train' if 'train' in argv else ''}")
    assert err.count("\n") == 1 and err.startswith("textenv: plugin 'demo' from textenv-broken-plugin 1.0 failed to "
                                                   "load") and "textenv -p no:demo" in err
    assert cli.main(["plugins"]) == 2  # a command still stops on it, saying how to run without it


def test_the_demo_prints_a_megabyte_prompt_shortened_with_its_length(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("x" * 1_000_000 + "\n")
    argv = ["demo", "--model", "tiny-random", "--prompts", str(prompts), "--num-prompts", "1", "--max-new-tokens", "2",
            "--reward", "length"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert len(out) < 2_000 and "... (1,000,000 characters)" in out
