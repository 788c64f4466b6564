"""Built-in textenv plugins: scripted critics, the ``python:`` loader and prompt sets.

Each module is a plugin registered through the same manager as third-party ones.
"""
