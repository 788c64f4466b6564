"""Each built-in scripted critic on known inputs."""

from __future__ import annotations

import pytest

from textenv.plugins.keyword import keyword
from textenv.plugins.length import length
from textenv.plugins.repetition import repetition
from textenv.plugins.sentiment import sentiment


def test_sentiment_is_vader_compound():
    scores = sentiment(["What a wonderful, beautiful film!", "Terrible. I hated it.", "The film is 90 minutes."])
    assert scores[0] > 0.8 and scores[1] < -0.7 and scores[2] == 0.0
    assert sentiment(["I hated it."], target="negative")[0] == pytest.approx(-sentiment(["I hated it."])[0])
    with pytest.raises(ValueError, match="target"):
        sentiment(["x"], target="happy")


def test_keyword_counts_includes_and_excludes():
    texts = ["A great, great movie", "boring and great", "Greatness", "nothing"]
    assert keyword(texts, include="great|movie", exclude=["boring"]) == [2.0, 0.0, 0.0, 0.0]
    assert keyword(texts, include=["great"], case_sensitive=True) == [1.0, 1.0, 0.0, 0.0]
    assert keyword(texts, include=[r"great\w*"], regex=True) == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="include"):
        keyword(texts)


def test_keyword_words_may_begin_or_end_with_symbols():
    texts = ["I love C++", "C++11 is old", "ok :)", "(:)", "ok:)", "Cs"]
    assert keyword(texts, include="C++") == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert keyword(texts, include=":)") == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert keyword(texts, include=["C"]) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_keyword_regex_strings_are_one_pattern():
    texts = ["good and great", "good", "meh"]
    assert keyword(texts, include="(good|great)", regex=True) == [1.0, 1.0, 0.0]
    assert keyword(texts, include="good|great", regex=True) == [1.0, 1.0, 0.0]
    assert keyword(texts, exclude="good|great", regex=True) == [-1.0, -1.0, 0.0]
    assert keyword(texts, include="good|great") == [2.0, 1.0, 0.0]


def test_length_penalizes_distance_from_the_target():
    ids = [[5] * 10, [5] * 5 + [1], [5] * 20]
    assert length(["", "", ""], ids, [False, True, False], target=10) == [0.0, -0.5, -1.0]
    words = ["one two three", "one", "a b c d e f"]
    assert length(words, [[]] * 3, [False] * 3, target=3, unit="words") == pytest.approx([0.0, -2 / 3, -1.0])
    with pytest.raises(ValueError):
        length(["x"], [[1]], [False], target=0)


def test_repetition_is_the_share_of_repeated_ngrams():
    assert repetition([""], [[1, 2, 3, 4, 5]]) == [0.0]
    # 1 2 1 2 1 2: trigrams (1,2,1) (2,1,2) (1,2,1) (2,1,2): 2 of 4 repeat
    assert repetition([""], [[1, 2, 1, 2, 1, 2]]) == [-0.5]
    assert repetition([""], [[7] * 10]) == [pytest.approx(-7 / 8)]
    assert repetition(["the cat the cat"], [[]], n=2, unit="words") == [pytest.approx(-1 / 3)]
    assert repetition([""], [[1, 2]]) == [0.0]  # shorter than n: nothing repeats
