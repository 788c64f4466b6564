"""benchmarks/label_efficiency.py: each arm's curve on a tiny model, written per (arm, seed), then reported."""

from __future__ import annotations

import json

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
