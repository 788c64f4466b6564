"""Every script in benchmarks/ runs in the test suite, tiny (cleanrl's smoke tests): no benchmark breaks unseen.

Each script here runs as its command line does, in a subprocess, on ``tiny-random`` for a step or so, and must
reach the end of its report; its figures are not checked (speed lives in the benchmarks, not in tests). A script
smoke-tested in another module is listed with that module. A new file in benchmarks/ fails
``test_every_benchmark_has_a_smoke_test`` until it is listed here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import patience
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TINY = ["--model", "tiny-random"]

SMOKE = {
    "best_of_n.py": ([*TINY, "--prompts", "2", "--n", "4"], "0.64"),  # the row of n = 4: log 4 - 3/4 nats
    "env_step.py": ([*TINY, "--sizes", "2", "--max-new-tokens", "4", "--episodes", "2", "--repeats", "1",
                     "--decode-batch", "2", "--decode-repeats", "1"], "bf16-autocast"),
    "hhat_agreement.py": (["--quick", "--presses", "5", "--seeds", "0", "--pool", "8", "--held-out", "2", "--batch",
                           "4", "--cache", "cache"], "mean ± std over seeds 0"),
    "learning_curve.py": ([*TINY, "--episodes", "8", "--batch-size", "8", "--mini-batch-size", "8",
                           "--eval-batches", "1", "--run-dir", "run"], "goal 0.8:"),
    # every probe at once, on one iteration of 64 episodes
    "learning_probes.py": ([*TINY, "--episodes", "64", "--eval-batches", "1", "--freeze-embeddings", "--clip-high",
                            "0.28", "--warmup-episodes", "64", "--critic-warmup-episodes", "64",
                            "--expected-future-kl", "--kl-to-go", "--anatomy", "--interpolate", "1.0", "0.5"],
                           "interpolated a = 0.5"),
    "long_run_memory.py": (["--iterations", "2", "--batch-size", "4", "--max-new-tokens", "4",
                            "--checkpoint-every", "1"], "run directory at the end"),
    "lora_memory.py": ([*TINY, "--iterations", "1", "--rank", "2"], "LoRA's peak"),
    # our side only (the trl baselines run on SmolLM2 alone), PPO and the GRPO-style agent
    "ppo_throughput.py": ([*TINY, "--steps", "1", "--warmup", "0"], "\ntextenv grpo "),
    # the 2-process launch only: one process is the same command without --multi_gpu
    "processes_throughput.py": ([*TINY, "--iterations", "1", "--batch-size", "4", "--mini-batch-size", "2",
                                 "--max-new-tokens", "4", "--mixed-precision", "no", "--processes", "2"],
                                "2 process(es):"),
    "reward_model.py": (["--backbone", "tiny-random", "--pairs", "24", "--epochs", "1", "--batch-size", "8",
                         "--score-n", "8", "--score-batch", "4", "--repeats", "1"], '"score_completions_per_s"'),
    "update_breakdown.py": (TINY, "inside real updates: min"),
}
"""Each script run here: its arguments and a piece of the end of its report."""

BASELINES = {"baselines/trl011_ppo.py": "0.11.4", "baselines/trl_grpo.py": "1.16.0"}
"""The trl baselines: their trl is not the project's, so here they must say where they run."""

ELSEWHERE = {
    "fault_injection.py": "test_checkpoints.py",  # 20 kills
    "feedback_study.py": "test_feedback_study.py",  # --quick, and a kill in the middle of a cell
    "gpu_check.py": "test_cuda.py",  # its CPU side without a GPU
    "gpu_check.sh": "test_cuda.py",  # bash -n; it runs the cuda-marked tests on a GPU machine
    "label_efficiency.py": "test_label_efficiency.py",  # every arm on the tiny model
}
"""Scripts whose smoke test is in another module."""

HELPERS = {
    "timing.py": ["env_step.py", "ppo_throughput.py"],
    "baselines/baseline_common.py": list(BASELINES),
    "few_label_learners.py": ["label_efficiency.py"],
}
"""Modules that are no script of their own, and the scripts run here that import them."""

SETUP = ["baselines/setup_trl011.sh", "baselines/setup_trl116.sh"]
"""The baselines' venv installers (``make baselines``, from the network): checked as bash, not run."""


def benchmark_files() -> set[str]:
    """The scripts and modules under benchmarks/, venvs and caches aside."""
    return {p.relative_to(BENCHMARKS).as_posix() for p in BENCHMARKS.rglob("*")
            if p.suffix in (".py", ".sh") and not any(part.startswith((".", "__")) for part in
                                                        p.relative_to(BENCHMARKS).parts)}


def test_every_benchmark_has_a_smoke_test():
    listed = {*SMOKE, *BASELINES, *ELSEWHERE, *HELPERS, *SETUP}
    files = benchmark_files()
    assert not files - listed, f"benchmarks without a smoke test: {sorted(files - listed)}; add one to SMOKE here"
    assert not listed - files, f"listed here, not in benchmarks/: {sorted(listed - files)}"
    for script, module in ELSEWHERE.items():
        assert script in (ROOT / "tests" / module).read_text(), f"tests/{module} does not run {script}"
    for helper, users in HELPERS.items():
        for user in users:
            assert f"from {Path(helper).stem} import" in (BENCHMARKS / user).read_text(), (helper, user)


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_the_benchmark_runs_tiny_to_the_end_of_its_report(script, tmp_path):
    args, end = SMOKE[script]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = patience.run([sys.executable, str(BENCHMARKS / script), *args], cwd=tmp_path, env=env)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert end in done.stdout, done.stdout[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("trl") is not None,
                    reason="trl is installed here: the baseline would run, for minutes on SmolLM2-135M")
@pytest.mark.parametrize("script", sorted(BASELINES))
def test_a_baseline_without_its_trl_says_in_one_line_where_it_runs(script):
    done = patience.run([sys.executable, str(BENCHMARKS / script)])
    assert done.returncode == 1
    name = "trl011" if "011" in script else "trl116"
    assert done.stderr.splitlines() == [
        f"trl is not installed for {sys.executable}: this baseline needs trl {BASELINES[script]} in a venv of its "
        f"own; make it with `bash benchmarks/baselines/setup_{name}.sh`, then run "
        f"`benchmarks/baselines/.venv-{name}/bin/python benchmarks/{script}`"]


@pytest.mark.parametrize("script", SETUP)
def test_the_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(BENCHMARKS / script)], capture_output=True).returncode == 0
