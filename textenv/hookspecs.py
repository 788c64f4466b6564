"""Hook specifications: every hook a textenv plugin may implement.

A plugin is any module or object with functions named like these, marked with
``textenv.hookimpl``. Implementations take only the arguments they use (pluggy
matches them by name). The built-in plugins (the reward sources, the agents' commands)
are declared in textenv's own entry-point group ``textenv.builtins``; third-party
packages declare ``[project.entry-points.textenv]``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("textenv")


@hookspec
def textenv_reward_sources():
    """Return the reward sources this plugin provides.

    Returns:
        A list of :class:`textenv.RewardSource`. Each source has a unique name, used
        in reward specs such as ``"sentiment + 0.5*length"``.
    """


@hookspec(firstresult=True)
def textenv_resolve_reward_source(name):
    """Build a reward source for a parametrized name, such as ``python:pkg.mod:fn``.

    Called only for names that no plugin lists in ``textenv_reward_sources``.

    Args:
        name: the source name as written in the reward spec.

    Returns:
        A :class:`textenv.RewardSource`, or None if this plugin does not know the name.
    """


@hookspec
def textenv_prompt_sets():
    """Return named prompt sets this plugin provides.

    Returns:
        A dict mapping a prompt-set name (used as ``prompts="NAME"``) to a list of
        prompt strings.
    """


@hookspec
def textenv_add_commands(subparsers):
    """Add this plugin's subcommands to the ``textenv`` command line (as pytest's ``pytest_addoption``).

    The core builds its parser and its own commands (``plugins``, ``demo``), then calls this hook
    on every plugin, built-ins first. Each command sets ``set_defaults(run=FUNCTION)``;
    ``textenv NAME ...`` calls ``FUNCTION(args)`` and exits with what it returns (None: 0).

    Args:
        subparsers: the ``textenv`` parser's subcommands (argparse's ``add_subparsers()``): add a
            command with ``subparsers.add_parser(NAME, help=...)``.

    Returns:
        The exception types these commands raise for a user's mistake (a wrong option, a missing
        file): ``textenv`` prints one as a line ``textenv: error: ...`` and exits with status 2.
        None if there are none.
    """
