"""A run directory is never lost or mixed: export, a second run, a copied run, two runs at once, a resume of an
older checkpoint, files the manifest does not list, the last good state, and what an interrupted run leaves.

Each case is a ``textenv train`` (or ``textenv export``) run on the tiny model, as a user would meet it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import textenv
from textenv.agents import PPO, CheckpointError, TrainingError, checkpoint
from textenv.agents.run_dir import LOCK_FILE
from textenv.cli import main
from textenv.envs.task import TextTask
from textenv.models import TINY_MODEL

TINY_RUN = ["--model", TINY_MODEL, "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4",
            "--eval-prompts", "0", "--precision", "fp32", "--no-progress", "--no-keep-cpu-memory"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("textenv: error: ") and "\n" not in err, err
    return err


def train(run: Path, *flags: str) -> int:
    return main(["train", *TINY_RUN, "--output-dir", str(run), *flags])


def contents(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by relative path, with its sha256: to see that nothing was touched (but the
    lock, whose holder each run writes)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != LOCK_FILE}  # (the lock is rewritten)


@pytest.fixture
def run(tmp_path, capsys) -> Path:
    """A finished run of 3 iterations with a checkpoint and samples after each."""
    run = tmp_path / "run"
    assert train(run, "--iterations", "3", "--checkpoint-every", "1", "--keep-checkpoints", "5",
                 "--sample-every", "1") == 0
    capsys.readouterr()
    return run


# ------------------------------------------------------------------ 1. export never writes over its source


@pytest.mark.parametrize("where", ["the run", "inside the run", "a parent of the run", "the checkpoint"])
def test_export_refuses_an_output_that_is_contains_or_is_inside_the_source_run(run, capsys, where):
    output = {"the run": run, "inside the run": run / "exported", "a parent of the run": run.parent,
              "the checkpoint": run / "checkpoints" / "iter_000003"}[where]
    before = contents(run)
    assert main(["export", str(run), str(output), "--overwrite"]) == 2
    err = one_line_error(capsys)
    assert f"{output}" in err and "the run being exported" in err, err
    assert contents(run) == before


# ------------------------------------------------------------------ 2. a new run never takes over another's directory


def test_a_new_run_in_a_directory_holding_another_runs_checkpoints_is_refused_unless_overwrite(run, capsys):
    before = contents(run)
    assert train(run, "--iterations", "1") == 2
    err = one_line_error(capsys)
    assert f"--output-dir {run}: holds the checkpoints of another run (up to iteration 3)" in err
    assert "--resume" in err and "--overwrite" in err
    assert contents(run) == before

    (run / "notes.txt").write_text("the user's own file")
    assert train(run, "--iterations", "1", "--overwrite") == 0, capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001"]  # the old run's went first
    state = json.loads((run / "checkpoints" / "iter_000001" / "trainer_state.json").read_text())
    assert len(state["history"]) == 1
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # the old run's events went too
    assert (run / "notes.txt").read_text() == "the user's own file"  # what is not ours stays


# ------------------------------------------------------------------ 3. a copied run resumes where it is


def test_a_resumed_copy_of_a_run_writes_into_the_copy_never_the_original(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "iter_000003")
    before = contents(run)
    assert main(["train", "--resume", str(copy), "--iterations", "4"]) == 0, capsys.readouterr().err
    assert contents(run) == before
    assert (copy / "checkpoints" / "iter_000004" / "manifest.json").exists()
    state = json.loads((copy / "checkpoints" / "iter_000004" / "trainer_state.json").read_text())
    assert state["config"]["run_dir"] == str(copy)


# ------------------------------------------------------------------ 4. one run at a time in a run directory

HOLD_LOCK = """
import sys, time
from textenv.agents.run_dir import RunLock
with RunLock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_a_directory_in_use_is_refused_naming_the_process(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"  # (waits as long as the child takes to start)
        assert train(run, "--iterations", "1") == 2
        err = one_line_error(capsys)
        assert f"--output-dir {run}: in use by another run (process {holder.pid}" in err, err
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(run, "--iterations", "1") == 0, capsys.readouterr().err  # a killed holder leaves no lock behind


# ------------------------------------------------------------------ 5. resuming an older checkpoint


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside_and_says_so(run, capsys):
    older = run / "checkpoints" / "iter_000001"
    assert main(["train", "--resume", str(older), "--iterations", "2"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "set aside iter_000002, iter_000003" in out, out
    assert checkpoint.latest(run)[0] == run / "checkpoints" / "iter_000002"
    state = json.loads((run / "checkpoints" / "iter_000002" / "trainer_state.json").read_text())
    assert state["num_iterations"] == 2
    aside = sorted(p.name for p in (run / "checkpoints").iterdir() if checkpoint.iteration_of(p) is None)
    assert aside == ["iter_000002.abandoned", "iter_000003.abandoned"]
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 1, 1, 1, 2, 2, 2, 2]  # the redone iteration's rows once


# ------------------------------------------------------------------ 6. only what the manifest lists is loaded


def test_a_folder_the_manifest_does_not_list_is_refused_not_loaded(run, capsys):
    latest = run / "checkpoints" / "iter_000003"
    shutil.copytree(latest / "model", latest / "reference")  # would be taken as the KL reference
    with pytest.raises(CheckpointError, match=r"iter_000003/reference/.*: not in the manifest"):
        PPO.load(latest)
    assert main(["train", "--resume", str(latest), "--iterations", "4"]) == 2
    assert "not in the manifest" in one_line_error(capsys)


# ------------------------------------------------------------------ 7. last-good is the last good iteration's end


def test_last_good_after_a_nonfinite_gradient_is_the_state_at_the_end_of_the_last_good_iteration(tmp_path):
    agent = PPO(TextTask.build(model=TINY_MODEL, prompts=["hello", "a"], max_new_tokens=4,
                             reward="length(target=3, normalize=true)"),
                batch_size=8, mini_batch_size=2, ppo_epochs=2, precision="fp32", progress=False,
                run_dir=str(tmp_path / "run"), checkpoint_every=1, keep_checkpoints=5)
    agent.learn(total_episodes=8)
    backwards = []

    def nan_from_the_third_backward(grad):  # three optimizer steps of iteration 2 go through first
        backwards.append(1)
        return grad * float("nan") if len(backwards) > 3 else grad

    agent.policy.value_head.weight.register_hook(nan_from_the_third_backward)
    with pytest.raises(TrainingError, match="iteration 2: the gradient norm is nan"):
        agent.learn(total_episodes=8)
    good, last_good = tmp_path / "run" / "checkpoints" / "iter_000001", tmp_path / "run" / "checkpoints" / "last-good"
    for part in ("model/model.safetensors", "value.safetensors", "optimizer.safetensors", "rng.safetensors"):
        expected, got = (safetensors.torch.load_file(p / part) for p in (good, last_good))
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), part
    expected, got = (json.loads((p / "trainer_state.json").read_text()) for p in (good, last_good))
    assert got == expected


# ------------------------------------------------------------------ 8. what an interrupted or finished run says


def test_an_interrupted_run_writes_its_reward_curve_and_names_the_command_that_resumes_it(tmp_path, capsys,
                                                                                          fresh_default_pm):
    @textenv.reward(name="presses_ctrl_c")
    def presses_ctrl_c(completions):
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C during the second rollout
        calls.append(1)
        return [0.0] * len(completions)

    calls: list[int] = []
    run = tmp_path / "run"
    assert train(run, "--reward", "presses_ctrl_c", "--iterations", "5") == 130
    out = capsys.readouterr().out
    assert f"resume with: textenv train --resume {run}" in out, out
    assert "PPO.load" not in out
    assert (run / "reward_curve.png").exists()


def test_resuming_a_run_that_has_done_its_iterations_says_there_is_nothing_to_do(run, capsys):
    before = contents(run)
    assert main(["train", "--resume", str(run), "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do: the run has done 3 iterations and --iterations is 2" in out, out
    assert contents(run) == before


@pytest.mark.filterwarnings("ignore:.*keep only their last")  # (the env says it cuts the prompt: expected here)
def test_a_megabyte_prompt_is_not_printed_whole_by_a_run(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a" * 1_000_000 + "\n")
    assert train(tmp_path / "run", "--prompts", str(prompts), "--iterations", "1", "--eval-prompts", "1",
                 "--sample-every", "1", "--progress") == 0
    out = capsys.readouterr().out
    assert "... (1,000,000 characters)" in out and max(len(line) for line in out.splitlines()) < 1000
