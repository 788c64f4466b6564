"""Smoke tests of the examples (cleanrl's way): each script runs tiny in a subprocess and exits 0."""

import sys
from pathlib import Path

import patience

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(script: str, *args: str) -> str:
    result = patience.run([sys.executable, str(EXAMPLES / script), *args])
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def test_custom_reward_prints_each_completion_with_its_terms():
    out = run_example(
        "custom_reward.py", "--model", "tiny-random", "--num-prompts", "2", "--max-new-tokens", "4"
    )
    lines = [line for line in out.splitlines() if "reward " in line]
    assert len(lines) == 2, out
    for line in lines:
        assert "sentiment=" in line and "exclamations=" in line, out


def test_sb3_ppo_prints_mean_reward_before_and_after():
    out = run_example("sb3_ppo.py", "--timesteps", "512", "--eval-episodes", "4")
    assert "mean reward before training:" in out, out
    assert "mean reward after 512 steps:" in out, out
    assert "sample:" in out, out


def test_examples_without_a_smoke_test_still_start():
    """A new example gets at least ``--help`` (its imports and argparse) until it has its own test."""
    covered = {"custom_reward.py", "sb3_ppo.py", "train_ppo.py"}
    for script in sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in covered):
        assert "usage:" in run_example(script, "--help"), script


def test_train_ppo_trains_and_generates(tmp_path):
    script = EXAMPLES / "train_ppo.py"
    result = patience.run([sys.executable, str(script), "--model", "tiny-random", "--episodes", "16",
                           "--max-new-tokens", "4"],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("[") and result.stdout.count("'") >= 4, result.stdout
    run = tmp_path / "runs" / "train_ppo"
    assert (run / "reward_curve.png").exists() and list((run / "checkpoints").iterdir())


def test_train_ppo_user_code_is_ten_lines():
    text = (EXAMPLES / "train_ppo.py").read_text().split("# --- the user code: ten lines\n", 1)[1]
    code = [line for line in text.splitlines() if line.strip()]
    assert len(code) <= 10, code


def test_rlhf_pipeline_runs_sft_reward_model_and_ppo_in_tiny_mode(tmp_path):
    out = run_example("rlhf_pipeline.py", "--tiny", "--output-dir", str(tmp_path))
    assert "held-out pairwise accuracy" in out, out
    assert "pretrained" in out and "SFT (before PPO)" in out and "after PPO" in out, out
    assert (tmp_path / "sft" / "model.safetensors").is_file()
    assert (tmp_path / "reward_model" / "reward_model.json").is_file()
    assert (tmp_path / "ppo" / "reward_curve.png").is_file()
