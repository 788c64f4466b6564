"""The ``textenv`` command line: the core's ``textenv plugins`` and ``textenv demo``, and every plugin's
commands (``textenv_add_commands``: the built-ins add ``train``, ``sft``, ``rm``, ``feedback``); helpers that
turn config dataclasses into flags.

Exit codes: 0 done, 2 a user's mistake (printed as one line), 130 interrupted, 1 anything else.

Plugin switches come before the command, as pytest's: ``textenv -p no:NAME COMMAND`` runs without the
plugin NAME (one that fails to load, say), ``-p NAME`` loads an installed plugin even with autoload off,
``--disable-plugin-autoload`` loads no installed plugin (see :mod:`textenv.plugin_manager`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import re
import sys
import textwrap
import time
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from textenv.envs.task import DEFAULT_PROMPTS, DEFAULT_REWARD
from textenv.models import DEFAULT_MODEL, ModelNotFoundError
from textenv.plugin_manager import (
    AUTOLOAD_ENV,
    DISABLE_ENV,
    PluginError,
    PluginManager,
    configure_plugins,
    disabled_from_environment,
    get_plugin_manager,
    make_plugin_manager,
)
from textenv.prompts import PromptError, shortened
from textenv.rewards import RewardError, parse_reward_spec


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot be read, or holds an unknown key or a value of the wrong kind."""


def build_parser(pm: PluginManager | None = None) -> tuple[argparse.ArgumentParser, tuple[type[Exception], ...]]:
    """The ``textenv`` parser with every command, and the exception types its commands raise for a user's mistake.

    Args:
        pm: whose plugins add their commands; the process-wide manager by default.
    """
    parser = argparse.ArgumentParser(
        prog="textenv",
        description="RLHF on text in a Gymnasium env. Exit status: 0 done, 2 a user's mistake (said in one line), "
                    "130 interrupted, 1 anything else.",
    )
    parser.add_argument(
        "-p", dest="plugins", action="append", default=[], metavar="NAME",
        help=f"no:NAME runs without the plugin NAME (its entry-point name; {DISABLE_ENV}=NAME,... does the same); "
             "NAME loads an installed plugin even with autoload off. Repeatable; before the command, as pytest's -p",
    )
    parser.add_argument(
        "--disable-plugin-autoload", action="store_true",
        help=f"load no installed plugin but those given with -p NAME (as {AUTOLOAD_ENV} set to any non-empty value)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list every registered reward source and prompt set")
    p.set_defaults(run=_plugins)

    p = sub.add_parser("demo", help="generate with a model in the env and show each completion's rewards")
    p.add_argument("--model", default=DEFAULT_MODEL, help="local path, hub id or smollm2-135m (default)")
    p.add_argument("--prompts", default=DEFAULT_PROMPTS, help="prompt set name, .txt or .jsonl file")
    p.add_argument("--reward", default=DEFAULT_REWARD, help="reward spec, e.g. 'sentiment + 0.5*length'")
    p.add_argument("--num-prompts", type=int, default=4, help="episodes generated side by side")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_demo)

    plugin_errors = (pm or get_plugin_manager()).add_commands(sub)
    return parser, (PluginError, PromptError, RewardError, ModelNotFoundError, ConfigFileError, *plugin_errors)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``textenv`` command.

    Args:
        argv: the command line without the program's name; None: ``sys.argv``'s, as the ``textenv`` program
            runs it (only then is a stdin that is no terminal refused before the plugins load: see
            :func:`without_a_terminal`; a call from Python keeps the commands' own order of checks).
    """
    as_a_program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    user_errors: tuple[type[Exception], ...] = (PluginError,)  # a plugin that fails to load, until the parser is built
    try:
        disabled, load, no_autoload = plugin_switches(argv)
        refusal = without_a_terminal(argv, disabled) if as_a_program else None
        if refusal:  # said before the plugins load: they import the model libraries, a minute on a cold start
            print(f"textenv: error: {refusal}", file=sys.stderr)
            return 2
        if disabled or load or no_autoload:  # before any plugin loads: the parser is built by the plugins
            configure_plugins(disabled=disabled, load=load, autoload=False if no_autoload else None)
        parser, user_errors = _parser_for(argv, disabled, load)
        args = parser.parse_args(argv)
        return args.run(args) or 0
    except user_errors as exc:
        print(f"textenv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second Ctrl-C during training, one in a reward call, or one while loading
        print(f"textenv: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130


def _parser_for(
    argv: list[str], disabled: list[str], load: list[str]
) -> tuple[argparse.ArgumentParser, tuple[type[Exception], ...]]:
    """:func:`build_parser`; for ``--help``, when an installed plugin fails to load, the parser without them.

    Plugins build the parser, so a broken one would leave no help at all: the failure is said in one line,
    and the help lists the core's and the built-ins' commands.
    """
    try:
        return build_parser()
    except PluginError as exc:
        if not any(arg in ("-h", "--help") for arg in argv[: argv.index("--") if "--" in argv else None]):
            raise
        print(f"textenv: {exc}; the help below leaves every installed plugin out", file=sys.stderr)
        return build_parser(make_plugin_manager(autoload=False, disabled=disabled, load=load))


def plugin_switches(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """The plugin switches before the command: ``-p no:NAME``, ``-p NAME``, ``--disable-plugin-autoload``.

    Read before the parser is built, since plugins build it (argparse reads them again, and checks them).

    Returns:
        The names to block, the names to load, and whether autoload is switched off.
    """
    disabled, load, no_autoload, _ = _read_switches(argv)
    return disabled, load, no_autoload


def _read_switches(argv: list[str]) -> tuple[list[str], list[str], bool, int]:
    """:func:`plugin_switches`, and the index in ``argv`` where the command starts."""
    disabled, load, no_autoload = [], [], False
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        arg, value = argv[i], None
        if arg == "-p" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        elif arg.startswith("-p") and not arg.startswith("--"):
            value = arg[2:].removeprefix("=")
        elif arg == "--disable-plugin-autoload":
            no_autoload = True
        if value is not None:
            (disabled if value.startswith("no:") else load).append(value.removeprefix("no:"))
        i += 1
    return disabled, load, no_autoload, i


# ------------------------------------------------------------- a person's keys, and no terminal to read them from

def not_a_terminal(where: str) -> str:
    """What is said when ``where`` (stdin, or a ``tty=`` path) is no terminal for a person's keys: here before the
    plugins load, and by the human feedback plugin's own check (its ``TerminalError``) after."""
    return (f"{where} is not a terminal: live feedback reads keypresses as you press them. Run this in an "
            "interactive terminal (not through a pipe, a redirect, nohup or a batch job); to label without a "
            "person, use the simulated human (textenv.plugins.human.simulated).")


def without_a_terminal(argv: list[str], disabled: Sequence[str] = ()) -> str | None:
    """Why this command line cannot run, when it reads a person's keys from stdin and stdin is not a terminal.

    A person's keys are read by the built-in ``human`` plugin: ``textenv feedback label``, and a ``--reward``
    spec with the ``human`` source (without ``tty=``). Its own check runs once the plugins are loaded, and they
    import the model libraries (transformers, datasets) first: tens of seconds on a cold start, to be told that
    stdin is a pipe. This check reads the command line only, before any plugin loads (and so before the command's
    own option errors); whatever it cannot tell from there (a ``--config`` file, a spec it cannot read,
    ``--resume``, ``--help``, the plugin blocked) it leaves to the plugin's check, which says the same.

    Args:
        argv: the command line, without the program's name.
        disabled: the plugins blocked with ``-p no:NAME`` (``$TEXTENV_DISABLE_PLUGINS`` is read here).

    Returns:
        The one-line error, or None where nothing is known to read keys from a stdin that is no terminal.
    """
    *_, start = _read_switches(argv)
    words = argv[start:argv.index("--") if "--" in argv else None]
    if not words or any(word in ("-h", "--help") for word in words) or _stdin_is_a_terminal():
        return None
    blocked = {*disabled, *disabled_from_environment()}
    if words[:2] == ["feedback", "label"] and "feedback" not in blocked:
        return not_a_terminal("stdin")
    if "human" in blocked:  # (another plugin's source may take the name)
        return None
    specs = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--reward"]
    specs += [word.removeprefix("--reward=") for word in words if word.startswith("--reward=")]
    for spec in specs:
        try:
            terms = parse_reward_spec(spec)
        except RewardError:
            continue  # said in full where the spec is read
        if any(term.name == "human" and "tty" not in term.options for term in terms):
            return f"reward source 'human': {not_a_terminal('stdin')}"
    return None


def _stdin_is_a_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):  # closed, or replaced by an object without a file
        return False


# ------------------------------------------------------------- config dataclasses as flags


_SECTION = re.compile(r"\s*# --- (.+)")


def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """Each field's section and attribute docstring, read from the class's source.

    Config dataclasses document each field with an attribute docstring and mark sections with
    ``# --- title`` comments (DESIGN.md). Reading both from the source keeps the help text in that
    one place: field metadata, or HfArgumentParser's help= strings, would be a second copy to keep
    in step (and HfArgumentParser has no argument groups, dashed flags or ``--no-flag``).

    Args:
        cls: a dataclass defined in a source file.

    Returns:
        ``{field: (section, docstring)}``, the section "" before the first marker, the docstring ""
        where there is none, its whitespace collapsed.
    """
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    body = ast.parse(source).body[0].body
    docs = {}
    for statement, following in zip(body, [*body[1:], None]):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        doc = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = str(following.value.value)
        markers = (_SECTION.match(line) for line in reversed(lines[: statement.lineno - 1]))
        section = next((m.group(1) for m in markers if m), "")
        docs[statement.target.id] = (section, " ".join(doc.split()))
    return docs


def option_converter(hint: Any) -> Callable[[str], Any]:
    """A function from a flag's text to a value of the field type ``hint`` (int, float, str, a Literal of strings,
    any of these or None); ``none`` (any case) gives None where the type allows it.

    Whether the value is allowed (a Literal's member, a range) is the dataclass's own check, made once for
    flags, files and Python callers alike.
    """
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    convert = str if typing.get_origin(base) is Literal else base

    def converter(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        return convert(text)

    converter.__name__ = f"{convert.__name__}{' or none' if optional else ''}"  # argparse's "invalid ... value"
    return converter


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    group: str | None = None,
    skip: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """Add a ``--flag`` for every field of the dataclass ``cls``, in an argument group per section.

    A flag is the field's name with dashes and stores into the field's name. Its default is
    ``argparse.SUPPRESS``: the namespace holds only what the user gave, so the dataclass stays the one
    source of defaults (each help line shows it) and a ``--config`` file's value is not overwritten by one.
    A bool takes ``--flag/--no-flag``; a field that may be None takes ``none``.

    Args:
        parser: where the flags go.
        cls: a frozen config dataclass with attribute docstrings.
        group: one group title for every field; None: the class's ``# --- title`` sections.
        skip: fields that get no flag.
        aliases: extra flags of a field, e.g. ``{"learning_rate": ("--lr",)}``.

    Returns:
        The argument groups by title, so a caller can add more flags to one.
    """
    docs, hints, groups = field_docs(cls), typing.get_type_hints(cls), {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        section, doc = docs.get(field.name, ("", ""))
        title = group or section or cls.__name__
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        hint = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        default = (flag if field.default else "--no-" + flag[2:]) if hint is bool else field.default
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")  # reST markup reads badly in a terminal
        text = text.replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": f"{text} (default: {'none' if default is None else default})"}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = option_converter(hint)
            kwargs["metavar"] = _metavar(hint)
        groups[title].add_argument(flag, *(aliases or {}).get(field.name, ()), **kwargs)
    return groups


def _metavar(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return "{" + ",".join(args) + "}"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return "|".join(_metavar(a) for a in args if a is not type(None)) + "|none"
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(hint, hint.__name__.upper())


def read_config_file(path: str | Path, hints: dict[str, Any]) -> dict[str, Any]:
    """The options in a YAML or JSON file: a mapping of option names (with ``_`` or ``-``) to values.

    Text values of non-text options go through :func:`option_converter` (YAML reads ``5e-5`` as text).

    Args:
        path: the file (``.json``: JSON; anything else: YAML, of which JSON is a subset).
        hints: the known options and their types.

    Returns:
        ``{option: value}`` with the options' own names.

    Raises:
        ConfigFileError: the file cannot be read or parsed, is not a mapping, names an unknown option, or
            holds text that does not convert to its option's type.
    """
    import difflib

    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                              f"{' '.join(str(exc).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigFileError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    options = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in hints:
            close = difflib.get_close_matches(name, hints, n=1)
            raise ConfigFileError(f"{path}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if isinstance(value, str) and hints[name] is not str:
            try:
                value = option_converter(hints[name])(value)
            except ValueError:
                expected = _metavar(hints[name]).lower()
                raise ConfigFileError(f"{path}: {key}: expected {expected}, got {value!r}") from None
        options[name] = value
    return options


def _plugins(args: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    sources = pm.reward_sources()
    width = max(map(len, sources))
    print("reward sources:")
    for name, source in sources.items():
        print(f"  {name:<{width}}  {source.description}\n  {'':<{width}}  from {source.origin}")
    print(f"  {'python:MODULE:FUNCTION':<{width}}  any function of yours, loaded by name")
    print("prompt sets:")
    for name, prompts in sorted(pm.prompt_sets().items()):
        print(f"  {name:<{width}}  {len(prompts)} prompts, e.g. {shortened(repr(prompts[0]))}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    from textenv.devices import default_device
    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import SamplingConfig, generate_episodes
    from textenv.models import load_causal_lm

    device = torch.device(args.device) if args.device else default_device()
    print(f"loading {args.model} on {device} ...", flush=True)
    start = time.perf_counter()
    model = load_causal_lm(args.model, device=device)
    env = TextGenVectorEnv(
        args.num_prompts,
        device=device,
        autoreset_mode="Disabled",
        model=args.model,
        prompts=args.prompts,
        reward=args.reward,
        max_new_tokens=args.max_new_tokens,
        chat_template=args.chat_template,
    )
    print(f"loaded in {time.perf_counter() - start:.1f} s; reward = {args.reward}", flush=True)
    start = time.perf_counter()
    episodes = generate_episodes(
        model, env, sampling=SamplingConfig(temperature=args.temperature), seed=args.seed, progress=True
    )
    tokens = int(episodes.completion_mask.sum())
    elapsed = time.perf_counter() - start
    for i, (prompt, completion) in enumerate(zip(episodes.prompts, episodes.completions)):
        terms = "  ".join(f"{k} {v[i]:+.3f}" for k, v in episodes.reward_terms.items())
        print(f"\n[{i}] {shortened(prompt)}\u27e6{completion}\u27e7\n    reward {episodes.rewards[i]:+.3f}  ({terms})")
    print(f"\n{tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.1f} tokens/s); "
          f"mean reward {episodes.rewards.mean():+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
