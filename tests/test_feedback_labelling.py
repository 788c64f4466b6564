"""Questions about whole completions: the simulated person's answers to them (rate, A/B, best-of-K)."""

from __future__ import annotations

import numpy as np
import pytest

from textenv.plugins.human.simulated import HumanModel, SimulatedJudge, VaderCritic

EXACT = HumanModel(miss=0.0, flip=0.0)
"""A person who never misses a question and never presses the wrong key."""


class TableCritic:
    """A critic that scores each completion by a table: the answers it implies are known exactly."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def word(self, word: str) -> float:
        return 0.0

    def completion(self, text: str) -> float:
        return self.scores[text]


SCORES = {"great": 0.9, "good": 0.4, "meh": 0.0, "bad": -0.5, "awful": -0.95, "also meh": 0.01}


def test_a_noise_free_judge_rates_compares_and_picks_by_the_critic():
    judge = SimulatedJudge(TableCritic(SCORES), pace=4.0, rng=np.random.default_rng(0), behaviour=EXACT)
    assert [judge.rate(t, 4)[0] for t in ("great", "good", "meh", "bad", "awful")] == ["5", "4", "3", "2", "1"]
    assert judge.compare("bad", "good", 8)[0] == "b" and judge.compare("great", "meh", 8)[0] == "a"
    assert judge.compare("meh", "also meh", 8)[0] == "t"  # closer than the tie gap
    texts = ["meh", "great", "awful", "good"]
    best, worst, seconds = judge.best_of(texts, 20)
    assert (best, worst) == (1, 2)
    assert 20 / 4 + 0.3 <= seconds <= 20 / 4 + 1.5  # reading at the pace, then a decision in the reaction range
    # no worst where none stands out (two within the tie gap), nor with two completions (the best says it all)
    assert judge.best_of(["meh", "great", "also meh"], 9)[:2] == (1, None)
    assert judge.best_of(["bad", "good"], 6)[:2] == (1, None)
    assert judge.best_of(["meh", "also meh", "meh"], 9)[:2] == (None, None)  # all alike: the question is skipped


def test_a_judge_on_a_scale_of_nine_spans_it():
    judge = SimulatedJudge(TableCritic(SCORES), rng=np.random.default_rng(0), behaviour=EXACT, scale=9)
    assert [judge.rate(t, 1)[0] for t in ("great", "meh", "awful")] == ["9", "5", "1"]


def test_the_judges_noise_is_the_persons():
    judge = SimulatedJudge(VaderCritic(), pace=4.0, rng=np.random.default_rng(0))
    n = 2000
    best = [judge.best_of(["A dull film.", "What a wonderful, brilliant film.", "A terrible, awful mess.",
                           "It was a film."], 16) for _ in range(n)]
    skipped = sum(b is None for b, _, _ in best)
    assert 0.07 < skipped / n < 0.13  # a miss (10 %) skips the question
    answered = [(b, w) for b, w, _ in best if b is not None]
    wrong_best = sum(b != 1 for b, _ in answered) / len(answered)
    wrong_worst = sum(w != 2 for _, w in answered if w is not None) / len(answered)
    assert 0.03 < wrong_best < 0.07 and 0.03 < wrong_worst < 0.07  # a wrong key (5 %): a random other one
    assert all(w != b for b, w in answered)


def test_a_seed_replays_the_same_answers():
    answers = []
    for _ in range(2):
        judge = SimulatedJudge(VaderCritic(), rng=np.random.default_rng(3))
        answers.append([(judge.rate("A fine film.", 4), judge.compare("Good.", "Bad.", 2),
                         judge.best_of(["Good.", "Bad.", "Fine."], 3)) for _ in range(50)])
    assert answers[0] == answers[1]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SimulatedJudge(VaderCritic(), pace=0.0), "pace is the tokens read per second and must be > 0, got 0.0"),
    (lambda: SimulatedJudge(VaderCritic(), scale=12), "scale is the highest rating, 2 to 9 (one key each), got 12"),
    (lambda: SimulatedJudge(VaderCritic()).best_of(["only one"], 2),
     "best_of needs at least 2 completions to choose among, got 1"),
])
def test_bad_judge_input_is_refused_in_one_line(make, message):
    with pytest.raises(ValueError, match=f"^{message.replace('(', '.').replace(')', '.')}$"):
        make()
