"""The plugin manager: built-in plugins, entry points, and reward functions from scripts.

Built-ins register through the same manager as third-party plugins (pytest's way). They are
declared in textenv's own entry-point group ``textenv.builtins`` (its pyproject.toml) and always
load, so the core names none of them: it imports no plugin and no agent. Entry points in the
group ``textenv`` (third-party plugins) load on first use unless autoload is off.

Switches, pytest's (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``, ``--disable-plugin-autoload``, ``-p``), checked
against pytest 9.2's ``_pytest/config/__init__.py``, which tests ``os.environ.get(...)`` for truth:

* ``TEXTENV_DISABLE_PLUGIN_AUTOLOAD`` set to any non-empty value turns autoload off: ``1``, ``true``,
  and ``0`` or ``false`` too (as with pytest); unset or empty leaves it on. ``textenv
  --disable-plugin-autoload`` does the same for one command.
* ``textenv -p no:NAME`` (repeatable), or ``TEXTENV_DISABLE_PLUGINS=NAME,NAME``, blocks one plugin:
  NAME is its entry-point name (``demo``), or ``DISTRIBUTION:NAME`` where two distributions share a
  name; built-ins are blocked by their entry-point name (``sentiment``).
* ``textenv -p NAME`` loads the entry point NAME even with autoload off (pytest's "only plugins
  explicitly specified with -p are loaded").

A plugin that fails is named in the error, with the ``-p no:NAME`` that runs without it; the unknown
reward-source error says when autoload is off or plugins are blocked.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from textenv import hookspecs
from textenv.prompts import prompt_problem
from textenv.rewards import RewardError, RewardSource, definition_site

ENTRY_POINT_GROUP = "textenv"
AUTOLOAD_ENV = "TEXTENV_DISABLE_PLUGIN_AUTOLOAD"
"""Any non-empty value turns entry-point autoload off, ``0`` included (pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD)."""
DISABLE_ENV = "TEXTENV_DISABLE_PLUGINS"
"""Comma-separated plugin names to block, as ``textenv -p no:NAME`` does."""
BUILTIN_GROUP = "textenv.builtins"
"""The entry-point group of textenv's own plugins, read from textenv's distribution only."""

hookimpl = pluggy.HookimplMarker("textenv")


class PluginError(RuntimeError):
    """A plugin failed to load or broke a hook's contract; the message names it."""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``textenv`` project, which also remembers where each plugin came from.

    Attributes:
        origins: each registered plugin's origin (built-in, entry point, script), by registered name.
        short_names: the name that ``-p no:NAME`` takes, by registered name (entry points and built-ins).
        blocked: the names blocked with :meth:`block`, in order.
        autoload_off: why entry-point autoload is off (said in the unknown-source error), or None when on.
    """

    def __init__(self) -> None:
        super().__init__("textenv")
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        self.short_names: dict[str, str] = {}
        self.blocked: list[str] = []
        self.autoload_off: str | None = None

    def block(self, name: str) -> None:
        """Block a plugin by name (``textenv -p no:NAME``), unregistering it if it is registered.

        ``name`` is a registered name, an entry-point name (every distribution's of that name) or a
        built-in's entry-point name.
        """
        for registered, short in list(self.short_names.items()):
            if name in (registered, short) and self.has_plugin(registered):
                self.unregister(name=registered)
        self.set_blocked(name)
        if name not in self.blocked:
            self.blocked.append(name)

    def _skips(self, ep: importlib.metadata.EntryPoint, name: str) -> bool:
        return any(self.is_blocked(n) for n in (name, ep.name))

    def _hint(self, plugin_name: str) -> str:
        """How to run without a plugin, for its error: ``textenv -p no:NAME``, or "" for a plugin not loaded by name."""
        short = self.short_names.get(plugin_name)
        if short is None:
            return ""
        return (f"; to run without it: textenv -p no:{short} ... (or {DISABLE_ENV}={short}; "
                f"{AUTOLOAD_ENV}=1 skips every installed plugin)")

    def register_plugin(self, plugin: Any, name: str, origin: str) -> None:
        """Register ``plugin`` under ``name``, replacing an earlier plugin of that name.

        Raises:
            PluginError: the plugin implements a ``textenv_`` hook that does not exist
                (a typo) or with arguments the hook does not have.
        """
        if self.has_plugin(name):
            self.unregister(name=name)
        try:
            self.register(plugin, name=name)
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.has_plugin(name):
                self.unregister(name=name)
            raise PluginError(f"plugin {name!r} ({origin}) is invalid: {exc}") from None
        self.origins[name] = origin

    def load_builtins(self) -> None:
        """Register textenv's own plugins: the entry points of its group ``textenv.builtins``, by name.

        Each registers under its module's name (``textenv.plugins.sentiment``), its origin "built-in".

        Raises:
            PluginError: textenv is not installed (its metadata declares the built-ins).
        """
        try:
            declared = importlib.metadata.distribution("textenv").entry_points.select(group=BUILTIN_GROUP)
        except importlib.metadata.PackageNotFoundError:
            raise PluginError(
                "textenv's built-in plugins are declared in its installed metadata, and textenv is not "
                "installed: pip install -e . (or make test) in its repository"
            ) from None
        for ep in sorted(declared, key=lambda ep: ep.name):
            if self._skips(ep, ep.value):
                continue
            self.short_names[ep.value] = ep.name
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"built-in plugin {ep.name!r} failed to load ({ep.value}): {type(exc).__name__}: {exc}"
                    + self._hint(ep.value)
                ) from exc
            self.register_plugin(plugin, ep.value, "built-in")

    def load_entry_points(self, only: Iterable[str] | None = None) -> None:
        """Load the plugins declared in the ``textenv`` entry-point group: all, or those named in ``only``.

        Each registers as ``DISTRIBUTION:NAME`` (see :func:`entry_point_plugin_name`), so
        two distributions may both name their entry point ``NAME``. Blocking either name
        (:meth:`block`) skips the plugin.

        Args:
            only: entry-point names (or ``DISTRIBUTION:NAME``) to load, as ``textenv -p NAME`` gives them
                with autoload off; None loads every one.

        Raises:
            PluginError: a plugin failed to import or is invalid (the message says how to block it), or a
                name in ``only`` is no installed plugin's.
        """
        wanted = None if only is None else set(only)
        found = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            origin = f"entry point {ep.name!r} ({dist})"
            name = entry_point_plugin_name(ep)
            if wanted is not None and not wanted & {name, ep.name}:
                continue
            found |= {name, ep.name}
            if self.has_plugin(name) or self._skips(ep, name):
                continue
            self.short_names[name] = ep.name
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from {dist} failed to load ({ep.value}): "
                    f"{type(exc).__name__}: {exc}{self._hint(name)}"
                ) from exc
            try:
                self.register_plugin(plugin, name, origin)
            except PluginError as exc:
                raise PluginError(f"{exc}{self._hint(name)}") from None
        missing = sorted((wanted or set()) - found)
        if missing:
            raise PluginError(f"-p {missing[0]}: no installed plugin of that name (in the entry-point group "
                              f"{ENTRY_POINT_GROUP!r})")

    def _call_each(self, hook_name: str, *, oldest_first: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a hook plugin by plugin, newest first (pluggy's order) unless ``oldest_first``,
        so a failure can name its plugin."""
        results = []
        impls = getattr(self.hook, hook_name).get_hookimpls()
        for impl in impls if oldest_first else impls[::-1]:
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except RewardError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} ({self.origins.get(impl.plugin_name, '?')}) "
                    f"failed in {hook_name}: {type(exc).__name__}: {exc}{self._hint(impl.plugin_name)}"
                ) from exc
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def reward_sources(self) -> dict[str, RewardSource]:
        """Every listed reward source by name, each with its origin filled in.

        Raises:
            PluginError: a plugin failed, returned something that is not a RewardSource,
                or two plugins offer the same name.
        """
        sources: dict[str, RewardSource] = {}
        for plugin_name, listed in self._call_each("textenv_reward_sources"):
            origin = self.origins.get(plugin_name, plugin_name)
            if isinstance(listed, RewardSource) or not isinstance(listed, Iterable):
                raise PluginError(
                    f"plugin {plugin_name!r} ({origin}) returned {listed!r} from "
                    "textenv_reward_sources; expected a list of textenv.RewardSource objects"
                )
            for source in listed:
                if not isinstance(source, RewardSource):
                    raise PluginError(
                        f"plugin {plugin_name!r} ({origin}) returned {source!r} from "
                        "textenv_reward_sources; expected textenv.RewardSource objects"
                    )
                if source.name in sources:
                    raise PluginError(
                        f"reward source {source.name!r} is provided twice: by "
                        f"{sources[source.name].origin} and by {origin}"
                    )
                sources[source.name] = _with_origin(source, origin)
        return dict(sorted(sources.items()))

    def get_reward_source(self, name: str) -> RewardSource:
        """The source for a name: a listed one, or one a resolver plugin builds (``python:...``).

        Raises:
            RewardError: no plugin knows the name; the message lists the known ones.
            PluginError: a resolver plugin failed or returned something that is not a RewardSource.
        """
        sources = self.reward_sources()
        if name in sources:
            return sources[name]
        for plugin_name, source in self._call_each("textenv_resolve_reward_source", name=name):
            origin = self.origins.get(plugin_name, plugin_name)
            if not isinstance(source, RewardSource):
                raise PluginError(
                    f"plugin {plugin_name!r} ({origin}) returned {source!r} from "
                    f"textenv_resolve_reward_source({name!r}); expected a textenv.RewardSource or None"
                )
            return _with_origin(source, origin)
        hint = difflib.get_close_matches(name, list(sources), n=1)
        off = self.autoload_off
        raise RewardError(
            f"unknown reward source {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f". Known sources: {', '.join(sources)}; or python:MODULE:FUNCTION"
            + (f". Installed plugins are not loaded: autoload is off ({off})" if off else "")
            + (f". Blocked plugins: {', '.join(self.blocked)}" if self.blocked else "")
        )

    def add_commands(self, subparsers: Any) -> tuple[type[Exception], ...]:
        """Let every plugin add its subcommands to the ``textenv`` command line (``textenv_add_commands``).

        The built-ins go first, in their declared order, so a third-party command whose name is taken
        fails, named, and the ``--help`` list reads in registration order.

        Returns:
            The exception types the plugins name as a user's mistake.

        Raises:
            PluginError: a plugin failed (a command name already taken, say) or returned something that
                is not a list of exception types.
        """
        user_errors: list[type[Exception]] = []
        for plugin_name, listed in self._call_each("textenv_add_commands", oldest_first=True, subparsers=subparsers):
            if not isinstance(listed, Iterable) or not all(
                isinstance(error, type) and issubclass(error, Exception) for error in listed
            ):
                raise PluginError(
                    f"plugin {plugin_name!r} ({self.origins.get(plugin_name, plugin_name)}) returned {listed!r} "
                    "from textenv_add_commands; expected a list of exception types, or None"
                )
            user_errors.extend(listed)
        return tuple(user_errors)

    def prompt_sets(self) -> dict[str, list[str]]:
        """Every named prompt set from every plugin.

        Raises:
            PluginError: a plugin failed or returned something that is not a dict, a set that is not a
                non-empty list of prompts (strings or conversations), or two plugins offer the same name
                (as for reward sources).
        """
        sets: dict[str, list[str]] = {}
        owners: dict[str, str] = {}
        for plugin_name, listed in self._call_each("textenv_prompt_sets"):
            origin = self.origins.get(plugin_name, plugin_name)
            if not isinstance(listed, Mapping):
                raise PluginError(
                    f"plugin {plugin_name!r} ({origin}) returned {listed!r} from "
                    "textenv_prompt_sets; expected a dict of name -> list of prompts"
                )
            for set_name, prompts in listed.items():
                prompts, problem = _prompt_set(set_name, prompts)
                if problem:
                    raise PluginError(f"plugin {plugin_name!r} ({origin}) returned a bad prompt set: {problem}")
                if set_name in sets:
                    raise PluginError(
                        f"prompt set {set_name!r} is provided twice: by plugin {owners[set_name]} "
                        f"and by plugin {plugin_name!r} ({origin})"
                    )
                sets[set_name] = prompts
                owners[set_name] = f"{plugin_name!r} ({origin})"
        return sets


def _prompt_set(name: str, prompts: Any) -> tuple[list, str | None]:
    """A plugin's prompt set as a list, and what is wrong with it or None (a string would train on its characters)."""
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Iterable):
        return [], (f"its prompt set {name!r} is a {type(prompts).__name__}; expected a list of prompts (strings "
                    "or conversations)")
    prompts = list(prompts)
    if not prompts:
        return prompts, f"its prompt set {name!r} is empty"
    for i, prompt in enumerate(prompts):
        problem = prompt_problem(prompt)
        if problem:
            return prompts, f"its prompt set {name!r}: prompt #{i} {problem}"
    return prompts, None


def entry_point_plugin_name(ep: importlib.metadata.EntryPoint) -> str:
    """The name an entry-point plugin registers under: ``DISTRIBUTION:NAME``, or ``NAME`` without a distribution.

    pluggy keeps one plugin per name, so the bare entry-point name would let a second
    distribution's plugin of the same name be skipped.
    """
    return f"{ep.dist.name}:{ep.name}" if ep.dist else ep.name


def _with_origin(source: RewardSource, origin: str) -> RewardSource:
    return source if source.origin else dataclasses.replace(source, origin=origin)


def make_plugin_manager(
    *, autoload: bool | None = None, disabled: Iterable[str] = (), load: Iterable[str] = ()
) -> PluginManager:
    """A new manager with the built-in plugins and, unless disabled, the installed ones.

    The built-ins load whatever ``autoload`` says: the switch is for third-party plugins.

    Args:
        autoload: load entry-point plugins. None: as pytest reads PYTEST_DISABLE_PLUGIN_AUTOLOAD, on
            unless the environment variable ``TEXTENV_DISABLE_PLUGIN_AUTOLOAD`` is set to any non-empty
            value, ``0`` and ``false`` included.
        disabled: plugin names to block (``textenv -p no:NAME``), besides those in ``$TEXTENV_DISABLE_PLUGINS``.
        load: entry-point names to load even with autoload off (``textenv -p NAME``).

    Raises:
        PluginError: a plugin failed to load; the message names it and says how to block it.
    """
    pm = PluginManager()
    for name in [*disabled_from_environment(), *disabled]:
        pm.block(name)
    pm.load_builtins()
    if autoload is None:
        value = os.environ.get(AUTOLOAD_ENV)
        autoload = not value
        if not autoload:
            pm.autoload_off = (f"{AUTOLOAD_ENV}={value!r} is set; any non-empty value turns it off, as "
                               f"pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD: unset it to load them")
    elif not autoload:
        pm.autoload_off = "make_plugin_manager(autoload=False)"
    if autoload:
        pm.load_entry_points()
    elif load:
        pm.load_entry_points(only=load)
    return pm


def disabled_from_environment() -> list[str]:
    """The plugin names in ``$TEXTENV_DISABLE_PLUGINS`` (comma-separated, spaces ignored)."""
    return [name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()]


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager that envs use unless given another (made on first use)."""
    global _default
    if _default is None:
        _default = make_plugin_manager()
    return _default


def configure_plugins(*, disabled: Iterable[str] = (), load: Iterable[str] = (), autoload: bool | None = None) -> None:
    """Apply the ``textenv`` command's plugin switches to the process-wide manager.

    Made now with them where it does not exist yet (so a blocked plugin is never imported); an
    existing one has the named plugins unregistered and blocked, and, with ``autoload=False``, its
    entry-point plugins unregistered but those in ``load``.

    Args:
        disabled: ``-p no:NAME`` names.
        load: ``-p NAME`` names (entry points loaded even with autoload off).
        autoload: False for ``--disable-plugin-autoload``; None leaves the environment's say.
    """
    global _default
    if _default is None:
        _default = make_plugin_manager(autoload=autoload, disabled=disabled, load=load)
        if autoload is False:
            _default.autoload_off = "textenv --disable-plugin-autoload"
        return
    for name in disabled:
        _default.block(name)
    if autoload is False:
        keep = set(load)
        for registered, origin in list(_default.origins.items()):
            if origin.startswith("entry point") and _default.has_plugin(registered) \
                    and not keep & {registered, _default.short_names.get(registered)}:
                _default.unregister(name=registered)
        _default.autoload_off = "textenv --disable-plugin-autoload"
    if load:
        _default.load_entry_points(only=load)


def reward(fn: Callable | None = None, *, name: str | None = None, description: str = ""):
    """Register a function from a script as a reward source: the one-decorator path.

    Example::

        @textenv.reward
        def exclamations(completions):
            return [c.count("!") for c in completions]

        env = gym.make("textenv/TextGen-v0", reward="sentiment + 0.1*exclamations")

    Args:
        fn: the function (when used as ``@reward``).
        name: the source name; the function's name by default.
        description: one line for ``textenv plugins``; the docstring's first line by default.
    """

    def register(fn: Callable) -> Callable:
        source_name = name or fn.__name__
        source = RewardSource(source_name, fn, description, origin=f"script {definition_site(fn)}")
        plugin = types.SimpleNamespace(textenv_reward_sources=hookimpl(lambda: [source]))
        pm = get_plugin_manager()
        plugin_name = f"script:{source_name}"
        pm.register_plugin(plugin, plugin_name, source.origin)
        try:
            pm.reward_sources()  # a name taken by another plugin fails here, not at first use
        except PluginError:
            pm.unregister(name=plugin_name)
            raise
        fn.reward_source = source
        return fn

    return register(fn) if fn is not None else register


def unregister_reward(name: str) -> None:
    """Remove a source registered with :func:`reward` from the process-wide manager (tests, notebooks)."""
    get_plugin_manager().unregister(name=f"script:{name}")
