"""Prompt sources and their errors."""

from __future__ import annotations

import re

import pytest

from textenv import cli
from textenv.prompts import PromptError, load_prompts


def test_list_text_jsonl_and_named_set(tmp_path):
    assert load_prompts(["a", "b"]) == ["a", "b"]
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond line\n")
    assert load_prompts(txt) == ["first", "second line"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "one"}\n\n"two"\n{"prompt": "three", "id": 3}\n')
    assert load_prompts(str(jsonl)) == ["one", "two", "three"]
    movie = load_prompts("movie-reviews")
    assert len(movie) >= 40 and "This movie was" in movie


def test_malformed_jsonl_gives_path_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "unterminated\n')
    with pytest.raises(PromptError, match=rf"{path}:2: not valid JSON"):
        load_prompts(path)
    path.write_text('{"prompt": "ok"}\n\n{"text": "no prompt field"}\n')
    with pytest.raises(PromptError, match=rf'{path}:3: expected {{"prompt": "..."}}'):
        load_prompts(path)


@pytest.mark.parametrize("source, message", [
    ("no-such-set", "neither a file nor a prompt set; prompt sets: movie-reviews"),
    ("missing.txt", "missing.txt: no such prompt file"),
    ([], "no prompts"),
    (["ok", 3], "prompt #1 is int"),
])
def test_bad_sources(source, message):
    with pytest.raises(PromptError, match=message):
        load_prompts(source)


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_file_that_is_not_utf8_gives_path_and_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(b'"ok"\n"caf\xe9"\n')
    with pytest.raises(PromptError, match=rf"{re.escape(str(path))}:2: not valid UTF-8"):
        load_prompts(path)


def test_lines_split_on_newline_only_and_a_bom_is_dropped(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_bytes("\ufefffirst\r\npage\fbreak\nline\u2028separator\n".encode())
    assert load_prompts(txt) == ["first", "page\fbreak", "line\u2028separator"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes('\ufeff{"prompt": "one"}\r\n"two\u2028lines"\n'.encode())
    assert load_prompts(jsonl) == ["one", "two\u2028lines"]


@pytest.mark.parametrize("name", ["prompts", "prompts.txt", "prompts.jsonl"])
def test_a_directory_is_said_to_be_one(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    with pytest.raises(PromptError, match=rf"^{re.escape(str(folder))}: is a directory; expected a prompt file"):
        load_prompts(f"{folder}/")


def test_the_demo_says_a_prompts_directory_is_one_in_one_line(tmp_path, capsys):
    assert cli.main(["demo", "--model", "tiny-random", "--prompts", f"{tmp_path}/", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"textenv: error: {tmp_path}: is a directory") and err.count("\n") == 1
