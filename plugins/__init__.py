"""Built-in textenv plugins, loaded through the same manager as third-party ones.

Scripted critics as modules (``sentiment``, ``keyword``, ``length``, ``repetition``), the ``python:``
loader and the prompt sets; ``human`` and ``reward_model`` as packages, each with its machinery and its
``textenv`` subcommands. pyproject.toml's entry-point group ``textenv.builtins`` lists the plugin modules.
"""
