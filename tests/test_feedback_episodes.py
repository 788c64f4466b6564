"""Episode-level feedback: A/B pairs where the ensemble disagrees most, rating and comparing at a terminal."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from patience import STALL, wait_until

from textenv.plugins.human.episodes import compare_completions, rate_completions, select_pairs
from textenv.plugins.human.simulated import SimulatedHuman
from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.terminal import KeyReader


def test_pairs_come_where_the_ensemble_disagrees_most():
    #             prompt 0 ---------   prompt 1 ----
    mean = np.array([0.1, 0.2, 0.9, 0.5, 0.5])
    std = np.array([0.1, 0.8, 0.1, 0.3, 0.4])
    groups = np.array([0, 0, 0, 1, 1])
    pairs = select_pairs(mean, std, groups, per_group=2)
    # prompt 0: (0,1) and (1,2) both have spread hypot(0.1, 0.8); (0,1) has the closer means
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (1, 2), (3, 4)]
    assert pairs[0][2] == pytest.approx(np.hypot(0.1, 0.8))
    assert pairs[2][2] == pytest.approx(0.5)
    assert [(i, j) for i, j, _ in select_pairs(mean, std, groups, n_pairs=1)] == [(0, 1)]
    assert len(select_pairs(mean, std, groups)) == 2  # one per prompt by default


def test_a_single_model_falls_back_to_the_closest_scores():
    pairs = select_pairs(np.array([0.0, 0.5, 0.45, 3.0]), np.zeros(4), np.zeros(4, dtype=int))
    assert [(i, j) for i, j, _ in pairs] == [(1, 2)]


def test_pairs_never_mix_prompts_and_shapes_are_checked():
    assert select_pairs(np.zeros(3), np.ones(3), np.array([0, 1, 2])) == []
    with pytest.raises(ValueError, match=r"\(N,\)"):
        select_pairs(np.zeros(3), np.zeros(2), np.zeros(3))


def _wait_for(predicate, what: str, person) -> None:
    """Wait for ``predicate()`` for as long as text keeps arriving on the person's screen."""
    wait_until(predicate, what=what, progress=[lambda: len(person.screen)], poll=0.01)


def _answer_in_background(person, keys):
    """Type the keys one by one, as a person answering question after question.

    Args:
        keys: (key, n): type ``key`` once the n-th question ``[n/...]`` is on screen (a key typed
            earlier answers nothing).
    """

    def run():
        for key, asked in keys:
            _wait_for(lambda asked=asked: f"[{asked}/" in "".join(person.screen), f"question {asked}", person)
            time.sleep(0.05)
            person.type(key)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_comparing_at_a_terminal_stores_each_answer(tmp_path):
    with SimulatedHuman(judge=False) as person, FeedbackStore(tmp_path / "f.db") as store, \
            KeyReader(tty_path=person.tty_path) as reader:
        session = store.start_session("compare")
        # left, a wrong key, tie, b, skip
        _answer_in_background(person, [("\x1b[D", 1), ("z", 2), ("t", 2), ("b", 3), ("s", 4)])
        prompts = ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
        texts = ["good", "bad", "one", "two", "yes", "no", "x", "y"]
        given, quit_ = compare_completions(store, session, reader, prompts, texts,
                                           [(0, 1, 0.5), (2, 3, 0.4), (4, 5, 0.3), (6, 7, 0.2)],
                                           rng=np.random.default_rng(0))
        _wait_for(lambda: "does nothing here" in "".join(person.screen), "the hint for 'z'", person)
        rows = store.comparisons()
    assert (given, quit_) == (3, False)
    assert [r["choice"] for r in rows] == ["a", "tie", "b", "skip"]
    assert [r["disagreement"] for r in rows] == [0.5, 0.4, 0.3, 0.2]
    assert "does nothing here" in "".join(person.screen)
    # "a" was the completion shown on the left, whichever it was
    assert {rows[0]["completion_a"], rows[0]["completion_b"]} == {"good", "bad"}


def test_rating_stops_at_q_with_what_was_given(tmp_path):
    with SimulatedHuman(judge=False) as person, FeedbackStore(tmp_path / "f.db") as store, \
            KeyReader(tty_path=person.tty_path) as reader:
        session = store.start_session("rate")
        _answer_in_background(person, [("4", 1), ("q", 2)])
        given, quit_ = rate_completions(store, session, reader, ["p", "p", "p"], ["a", "b", "c"],
                                        [[1], [2], [3]], [["a"], ["b"], ["c"]], scale=5)
        assert (given, quit_) == (1, True)
        assert [(r["completion"], r["rating"]) for r in store.ratings()] == [("a", 4.0)]


@pytest.mark.parametrize("early", ["4444", "5s5"])
def test_keys_typed_before_a_question_is_on_screen_rate_nothing_and_are_said_to_be_ignored(tmp_path, early):
    with SimulatedHuman(judge=False) as person, FeedbackStore(tmp_path / "f.db") as store, \
            KeyReader(tty_path=person.tty_path) as reader:
        session = store.start_session("rate")
        person.type(early)  # typed in a burst while nothing is asked yet (the model is still generating)
        _wait_for(lambda: reader.keys.qsize() == len(early), "the early keys to be read", person)

        def answer():  # a person who answers each question once it is on screen
            for asked, key in enumerate(["5", "1", "3"], start=1):
                _wait_for(lambda asked=asked: f"[{asked}/3]" in "".join(person.screen), f"question {asked}", person)
                person.type(key)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        given, quit_ = rate_completions(store, session, reader, ["p", "p", "p"], ["a", "b", "c"],
                                        [[1], [2], [3]], [["a"], ["b"], ["c"]], scale=5)
        thread.join(STALL)
        _wait_for(lambda: "(ignored" in "".join(person.screen), "the note on the ignored keys", person)
        screen = "".join(person.screen)
        assert (given, quit_) == (3, False)
        assert [(r["completion"], r["rating"]) for r in store.ratings()] == [("a", 5.0), ("b", 1.0), ("c", 3.0)]
    n = len(early)
    assert f"(ignored {n} keys typed before this question was on screen: {' '.join(early)})" in screen
