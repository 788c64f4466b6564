"""``textenv rm train`` and ``textenv rm eval`` through main(argv), on tiny real models."""

from __future__ import annotations

import json
import random

from textenv.cli import main

WORDS = ["movie", "film", "plot", "actor", "scene", "story", "music", "ending", "cast", "script"]


def write_preferences(path, n: int, seed: int) -> str:
    """A separable preference file: lowercase completions are preferred to UPPERCASE ones."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(2))
            row = {
                "prompt": f"the {rng.choice(WORDS)} was",
                "chosen": f" {words}",
                "rejected": f" {words.upper()}",
            }
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_rm_train_then_eval_scores_above_90_percent(tmp_path, capsys):
    train = write_preferences(tmp_path / "train.jsonl", 120, seed=0)
    test = write_preferences(tmp_path / "test.jsonl", 50, seed=1)
    out = tmp_path / "rm"
    code = main(
        [
            "rm",
            "train",
            train,
            "--output",
            str(out),
            "--backbone",
            "tiny-random",
            "--lr",
            "3e-3",
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "loaded 120 preference pairs from 120 records" in printed
    accuracy = float(printed.split("held-out pairwise accuracy ")[1].split()[0])
    assert accuracy > 0.9
    assert (out / "loss_curve.png").is_file() and (out / "member-0" / "model.safetensors").is_file()

    assert main(["rm", "eval", str(out), test, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("pairwise accuracy ")[1].split()[0])
    assert accuracy > 0.9 and "on 50 pairs" in printed

    # training again into the same directory needs --overwrite
    assert main(["rm", "train", train, "--output", str(out), "--backbone", "tiny-random"]) == 2
    assert (
        "already holds a reward model; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    )


def test_bad_data_and_model_paths_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n'
    )
    assert (
        main(
            ["rm", "train", str(bad), "--output", str(tmp_path / "rm"), "--backbone", "tiny-random"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith(f"textenv: error: {bad}:2: missing field 'rejected'")
        and "Traceback" not in err
    )
    assert not (tmp_path / "rm").exists()

    assert main(["rm", "eval", str(tmp_path), str(bad)]) == 2
    assert "textenv: error:" in capsys.readouterr().err

    good = write_preferences(tmp_path / "good.jsonl", 4, seed=0)
    assert main(["rm", "eval", str(tmp_path / "nowhere"), good]) == 2
    assert "is not a saved reward model (no such directory)" in capsys.readouterr().err
