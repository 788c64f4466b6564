"""The plugin manager: built-in plugins, entry points, and reward functions from scripts.

Built-ins register through the same manager as third-party plugins (pytest's way). They are
declared in textenv's own entry-point group ``textenv.builtins`` (its pyproject.toml) and always
load, so the core names none of them: it imports no plugin and no agent. Entry points in the
group ``textenv`` (third-party plugins) load on first use unless ``TEXTENV_DISABLE_PLUGIN_AUTOLOAD``
is set. A failing plugin is named in the error.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from textenv import hookspecs
from textenv.rewards import RewardError, RewardSource, definition_site

ENTRY_POINT_GROUP = "textenv"
AUTOLOAD_ENV = "TEXTENV_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_GROUP = "textenv.builtins"
"""The entry-point group of textenv's own plugins, read from textenv's distribution only."""

hookimpl = pluggy.HookimplMarker("textenv")


class PluginError(RuntimeError):
    """A plugin failed to load or broke a hook's contract; the message names it."""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``textenv`` project, which also remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("textenv")
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}

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
            self.register_plugin(ep.load(), ep.value, "built-in")

    def load_entry_points(self) -> None:
        """Load every plugin declared in the ``textenv`` entry-point group.

        Each registers as ``DISTRIBUTION:NAME`` (see :func:`entry_point_plugin_name`), so
        two distributions may both name their entry point ``NAME``. Blocking either name
        (``set_blocked``) skips the plugin.
        """
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            origin = f"entry point {ep.name!r} ({dist})"
            name = entry_point_plugin_name(ep)
            if self.has_plugin(name) or self.is_blocked(name) or self.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from {dist} failed to load ({ep.value}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.register_plugin(plugin, name, origin)

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
                    f"failed in {hook_name}: {type(exc).__name__}: {exc}"
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
        raise RewardError(
            f"unknown reward source {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f". Known sources: {', '.join(sources)}; or python:MODULE:FUNCTION"
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
            PluginError: a plugin failed or returned something that is not a dict, or two
                plugins offer the same name (as for reward sources).
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
                if set_name in sets:
                    raise PluginError(
                        f"prompt set {set_name!r} is provided twice: by plugin {owners[set_name]} "
                        f"and by plugin {plugin_name!r} ({origin})"
                    )
                sets[set_name] = prompts
                owners[set_name] = f"{plugin_name!r} ({origin})"
        return sets


def entry_point_plugin_name(ep: importlib.metadata.EntryPoint) -> str:
    """The name an entry-point plugin registers under: ``DISTRIBUTION:NAME``, or ``NAME`` without a distribution.

    pluggy keeps one plugin per name, so the bare entry-point name would let a second
    distribution's plugin of the same name be skipped.
    """
    return f"{ep.dist.name}:{ep.name}" if ep.dist else ep.name


def _with_origin(source: RewardSource, origin: str) -> RewardSource:
    if source.origin:
        return source
    return RewardSource(source.name, source.fn, source.description, origin)


def make_plugin_manager(*, autoload: bool | None = None) -> PluginManager:
    """A new manager with the built-in plugins and, unless disabled, the installed ones.

    The built-ins load whatever ``autoload`` says: the switch is for third-party plugins.

    Args:
        autoload: load entry-point plugins; by default, unless the environment variable
            ``TEXTENV_DISABLE_PLUGIN_AUTOLOAD`` is set.
    """
    pm = PluginManager()
    pm.load_builtins()
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        pm.load_entry_points()
    return pm


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager that envs use unless given another (made on first use)."""
    global _default
    if _default is None:
        _default = make_plugin_manager()
    return _default


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
