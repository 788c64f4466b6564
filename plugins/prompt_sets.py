"""Built-in prompt sets, such as ``movie-reviews`` (openings of film reviews to continue)."""

from __future__ import annotations

from importlib.resources import files

from textenv.plugin_manager import hookimpl


def _read(name: str) -> list[str]:
    text = files("textenv.data").joinpath(name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@hookimpl
def textenv_prompt_sets():
    return {"movie-reviews": _read("movie_reviews.txt")}
