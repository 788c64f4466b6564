"""benchmarks/label_efficiency.py: each arm's curve on a tiny model, written per (arm, seed), then reported."""

from __future__ import annotations

import json

import numpy as np
from benchmark_module import load_benchmark


def test_each_arm_writes_its_curve_and_a_rerun_only_reports(tmp_path, capsys):
    module = load_benchmark("label_efficiency")
    argv = ["--model", "tiny-random", "--critic", "case", "--per-prompt", "2", "--seeds", "0", "--steps", "6,12",
            "--rating-steps", "12,24", "--out", str(tmp_path)]
    assert module.main(argv) == 0
    curves = {arm: json.loads((tmp_path / f"{arm}-head-seed0.json").read_text())["curve"] for arm in module.ARMS}
    for arm in ("active", "random"):  # questions asked as planned; a tie or a skip gives no pair
        assert [p["questions"] for p in curves[arm]] == [6, 12]
        assert all(p["pairs"] <= p["questions"] and 0 <= p["accuracy"] <= 1 for p in curves[arm])
    assert [p["questions"] for p in curves["ratings"]] == [12, 24]
    assert curves["ratings"][0]["person_minutes"] < curves["ratings"][1]["person_minutes"]
    table = (tmp_path / "table.md").read_text()
    assert "| active | head | 12 |" in table and "| ratings | head | 24 |" in table

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*-seed0.json")}
    capsys.readouterr()
    assert module.main(argv) == 0  # every (arm, seed) done: nothing is relabelled or retrained
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*-seed0.json")} == stamps
    assert "held-out pairs" not in capsys.readouterr().out


def test_the_fast_learners_run_on_every_kind_of_label_and_report_against_the_ceiling(tmp_path, capsys):
    module = load_benchmark("label_efficiency")
    argv = ["--model", "tiny-random", "--critic", "case", "--per-prompt", "2", "--seeds", "0", "--learners",
            "--learner-steps", "ratings=6,12;ab=3,6;best=2,4;presses=2,40", "--candidates", "2", "--out", str(tmp_path)]
    assert module.main(argv) == 0
    result = json.loads((tmp_path / "learners-seed0.json").read_text())
    assert set(result["curves"]) == set(module.LEARNER_ARMS)
    assert [p["labels"] for p in result["curves"]["ratings"]] == [6, 12]
    assert [p["labels"] for p in result["curves"]["best"]] == [2, 4]
    views = {*module.VIEWS, "ensemble"}
    for arm in ("ratings", "ab", "best"):
        for point in result["curves"][arm]:
            assert set(point["accuracy"]) == views and all(0 <= a <= 1 for a in point["accuracy"].values())
    assert set(result["curves"]["stream"][0]["accuracy"]) == {"tokens", "Ĥ"}  # keypresses: per-token learners
    exact = result["curves"]["exact"]  # the views' ceiling: all 36 training openings x 2, the critic's own scores
    assert [p["labels"] for p in exact] == [72] and set(exact[0]["accuracy"]) == {*module.VIEWS, "ensemble"}
    shown = [p["pairs"] for p in result["curves"]["presses"]]
    assert shown[0] < shown[1]  # a larger press budget streams more completions
    assert 0.5 < result["ceilings"]["rating"] <= 1 and 0.5 < result["ceilings"]["ab"] <= 1
    table = (tmp_path / "learners.md").read_text()
    assert "| best | 4 |" in table and "one noisy rating" in table and "Goal 0.72 from <= 100 labels" in table
    assert "Best within 15 person-minutes" in table
    assert module.main(["--report", "--out", str(tmp_path)]) == 0  # both reports read the folder

    capsys.readouterr()
    assert module.main(argv) == 0  # done: nothing is relabelled or refitted
    assert "completions to label" not in capsys.readouterr().out


def test_the_ridge_agrees_in_both_forms_and_learns_a_clear_signal(monkeypatch):
    fl = load_benchmark("few_label_learners")
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(60, 60)), rng.normal(size=60)
    y = x @ w + rng.normal(size=60)
    test = rng.normal(size=(5, 60))
    with monkeypatch.context() as m:
        m.setattr(fl, "ALPHAS", np.array([0.5]))  # one strength: leave-one-out would see the duplicates below
        dual = fl.ridge(x, y)(test)  # N <= D: solved in the dual
        primal = fl.ridge(np.vstack([x, x]), np.r_[y, y])(test)  # the same data twice: N > D, the primal
    np.testing.assert_allclose(dual, primal, rtol=1e-6)
    signal = fl.ridge(x[:, :5], x[:, :5] @ w[:5] + 0.1 * rng.normal(size=60))(test[:, :5])
    assert np.corrcoef(signal, test[:, :5] @ w[:5])[0, 1] > 0.95  # a clear signal is learned, not shrunk away
