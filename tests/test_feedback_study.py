"""benchmarks/feedback_study.py: its quick path runs every arm on a tiny model, cells accumulate, the report
marks what is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_module import load_benchmark
from patience import run, wait_for_exit


@pytest.fixture(scope="module")
def study_module():
    return load_benchmark("feedback_study")


TINY = ["--quick", "--model", "tiny-random", "--critic", "case", "--budgets", "0.25", "--time-scale", "40"]


def test_quick_study_writes_every_cell_then_skips_them_and_reports_the_missing_seed(study_module, tmp_path, capsys):
    assert study_module.main([*TINY, "--out", str(tmp_path)]) == 0
    cells = tmp_path / "quick" / "cells"
    names = sorted(p.stem for p in cells.glob("*.json"))
    assert names == sorted(["floor-seed0", "reference-seed0", "tamer-0.25min-seed0", "tamer_no_hhat-0.25min-seed0",
                            "ratings-0.25min-seed0", "ab_active-0.25min-seed0", "ab_random-0.25min-seed0",
                            "ratings_coin-0.25min-seed0"])
    results = {name: json.loads((cells / f"{name}.json").read_text()) for name in names}
    for name, r in results.items():
        assert -1 <= r["eval_mean"] <= 1 and np.isfinite(r["kl"]), name
    assert results["floor-seed0"]["kl"] == pytest.approx(0.0, abs=1e-6)  # the untrained policy is the reference
    for name in ("tamer-0.25min-seed0", "tamer_no_hhat-0.25min-seed0", "ratings-0.25min-seed0",
                 "ab_active-0.25min-seed0"):
        # the person labelled, and stopped at the budget (give or take the question or completion in progress)
        assert results[name]["labels"] > 0 and 0 < results[name]["person_minutes"] < 0.25 + 0.2, name
    for name in ("ab_active-0.25min-seed0", "ab_random-0.25min-seed0"):
        curve = results[name]["rm_accuracy"]  # one held-out accuracy per round, on more pairs each time
        assert curve and all(0 <= acc <= 1 for _, acc in curve)
        assert [n for n, _ in curve] == sorted(n for n, _ in curve)
    # the control asks the same questions as the ratings arm; only the pairs' order is the coin's
    coin, rated = results["ratings_coin-0.25min-seed0"], results["ratings-0.25min-seed0"]
    assert (coin["labels"], coin["pairs"]) == (rated["labels"], rated["pairs"])
    assert results["tamer-0.25min-seed0"]["hhat"]  # the Ĥ commit the TAMER cell used
    out = capsys.readouterr().out
    assert "| floor | 0 | 1/1 |" in out and (tmp_path / "quick" / "feedback_study.png").stat().st_size > 0

    # a rerun finds every cell done and writes none again
    stamps = {p: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    assert study_module.main([*TINY, "--out", str(tmp_path)]) == 0
    assert "floor-seed0: done already" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in cells.glob("*.json")} == stamps
    # a cell made with other settings is never taken for one of this study's
    with pytest.raises(SystemExit, match="other settings"):
        study_module.main([*TINY, "--out", str(tmp_path), "--iterations", "2"])

    # the report over two seeds marks seed 1 missing in every row, from the cells present only
    assert study_module.main([*TINY, "--out", str(tmp_path), "--seeds", "0,1", "--report"]) == 0
    table = (tmp_path / "quick" / "table.md").read_text()
    assert "| floor | 0 | 1/2 (missing) |" in table and "| tamer | 0.25 | 1/2 (missing) |" in table
    assert "not met" in table and "missing" in table
    assert {p: p.stat().st_mtime_ns for p in cells.glob("*.json")} == stamps


def test_a_killed_run_loses_only_the_cell_in_flight(tmp_path):
    """SIGKILL in the middle of a cell: the finished cells stay, the next run redoes only the killed one."""
    import os
    import signal
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "feedback_study.py"
    argv = [sys.executable, str(script), *TINY, "--out", str(tmp_path), "--arms", "floor,reference",
            "--iterations", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in child.stdout:
        if "reference-seed0: running" in line:  # the floor cell is written, the reference is starting
            child.send_signal(signal.SIGKILL)
            break
    wait_for_exit(child)
    cells = tmp_path / "quick" / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["floor-seed0.json"]  # no half-written reference
    floor = (cells / "floor-seed0.json").stat().st_mtime_ns

    rerun = run(argv, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "floor-seed0: done already" in rerun.stdout and "reference-seed0: running" in rerun.stdout
    assert sorted(p.name for p in cells.iterdir()) == ["floor-seed0.json", "reference-seed0.json"]
    assert (cells / "floor-seed0.json").stat().st_mtime_ns == floor


def test_the_simulated_person_answers_by_the_critic_with_its_noise(study_module):
    judge = study_module.EpisodeJudge(study_module.make_critic("vader"), 4.0, np.random.default_rng(0))
    keys = [judge.rate("What a wonderful, brilliant film.", 8)[0] for _ in range(400)]
    assert 0.8 < keys.count("5") / 400 < 0.95  # misses (10 %) are skips, wrong keys (5 %) random ratings
    assert 0.05 < keys.count("s") / 400 < 0.15
    key, seconds = judge.compare("A terrible, awful mess.", "A great joy.", 12)
    assert key in ("b", "s", "a") and 12 / 4 + 0.3 <= seconds <= 12 / 4 + 1.5
    answers = [judge.compare("A terrible, awful mess.", "A great joy.", 12)[0] for _ in range(400)]
    assert answers.count("b") > 0.8 * 400 and answers.count("t") == 0


def test_reward_model_settings_matter_to_the_reward_model_arms_only(study_module):
    import dataclasses

    study = study_module.Study(rm_pooling="mean", rm_freeze=True)
    # a cell from before the reward models' pooling and freezing were settings: fine-tuned [CLS] models
    old = {k: v for k, v in dataclasses.asdict(study).items() if k not in ("rm_pooling", "rm_freeze")}
    assert study_module.settings_differ(study, old, "ratings")
    assert not study_module.settings_differ(study_module.Study(), old, "ab_active")
    assert not study_module.settings_differ(study, old, "floor")  # no reward model: nothing it depends on changed
    assert study_module.settings_differ(study, {**old, "iterations": 3}, "floor")
