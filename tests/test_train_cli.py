"""``textenv train``: flags generated from PPOConfig, a --config file, one-line errors, exit codes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal

import pytest
import torch

import textenv
from textenv.agents import PPOConfig
from textenv.agents.train import TrainTask, train_settings
from textenv.cli import build_parser, main
from textenv.models import TINY_MODEL, build_tiny_model

# A tiny real run: two iterations of 4 episodes on the byte-level model, nothing printed but the summary.
TINY_RUN = ["--model", TINY_MODEL, "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4",
            "--eval-prompts", "0", "--precision", "fp32", "--no-progress", "--no-keep-cpu-memory"]


def parse(*argv: str):
    return build_parser()[0].parse_args(["train", *argv])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("textenv: error: ") and "\n" not in err, err
    return err


def test_every_config_field_is_a_flag_with_the_config_default_in_its_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(PPOConfig):
        if field.name != "run_dir":  # the task's --output-dir
            assert f"--{field.name.replace('_', '-')}" in help_text, field.name
    assert "--learning-rate FLOAT, --lr FLOAT" in help_text and "(default: 5e-05)" in help_text
    assert "--adaptive-kl, --no-adaptive-kl" in help_text
    titles = ["task:", "batch sizes:", "optimization:", "PPO objective:", "KL penalty to the reference:", "rewards:",
              "advantages:", "sampling:", "hardware, logging and checkpoints:"]
    positions = [help_text.index(title) for title in titles]
    assert positions == sorted(positions)


def test_no_flag_means_the_config_defaults():
    task, options = train_settings(parse())
    assert options == {}  # the CLI adds no defaults of its own: PPO(env) and textenv train train alike
    assert task == TrainTask()


def test_flags_parse_into_the_config_fields():
    _, options = train_settings(parse("--lr", "1e-3", "--kl-coef", "0.1", "--clip", "0.3", "--no-whiten-advantages",
                                      "--value-learning-rate", "none", "--kl-estimator", "k3", "--kl-in-loss"))
    config = PPOConfig.from_options(options)
    assert (config.learning_rate, config.init_kl_coef, config.cliprange) == (1e-3, 0.1, 0.3)
    assert config.whiten_advantages is False and config.value_learning_rate is None
    assert config.kl_estimator_used == "k3"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_gives_options_and_flags_override_it(tmp_path, suffix):
    values = {"lam": 0.5, "batch-size": 8, "learning_rate": "2e-4", "iterations": 3, "kl_estimator": None}
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(values))  # JSON is YAML too
    task, options = train_settings(parse("--config", str(path), "--lam", "0.7"))
    assert task.iterations == 3
    assert options == {"lam": 0.7, "batch_size": 8, "learning_rate": 2e-4, "kl_estimator": None}


def test_an_unknown_key_in_the_config_file_is_one_line_naming_file_and_key(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("lam: 0.9\nlerning_rate: 1e-3\n")
    assert main(["train", "--config", str(path)]) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "unknown key 'lerning_rate'" in err and "did you mean 'learning_rate'" in err


@pytest.mark.parametrize(("text", "message"), [
    ("lam: 2\n", "lam must be in [0, 1], got 2"),
    ("learning_rate: fast\n", "learning_rate: expected float, got 'fast'"),
    ("iterations: 0\n", "iterations must be an integer >= 1, got 0"),
    ("- lam\n", "expected a mapping of option names to values"),
])
def test_a_bad_value_in_the_config_file_is_one_line_naming_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(("argv", "message"), [
    (["--ppo-epochs", "0"], "ppo_epochs must be >= 1, got 0"),
    (["--keep-checkpoints", "0"], "keep_checkpoints must be >= 1, got 0"),
    (["--kl-estimator", "k4"], "kl_estimator must be one of 'k1', 'k2', 'k3', 'full' or None, got 'k4'"),
    (["--batch-size", "10", "--mini-batch-size", "4"], "batch_size 10 is not a multiple of mini_batch_size 4"),
    (["--top-p", "0.9"], "train at top_k=0, top_p=1.0"),
    (["--device", "gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_a_wrong_option_is_one_line_and_exit_status_2(capsys, argv, message):
    assert main(["train", *argv]) == 2
    assert message in one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_one_line(capsys):
    assert main(["train", "--device", "cuda"]) == 2
    assert "device 'cuda' was asked for but torch.cuda.is_available() is False" in one_line_error(capsys)


def test_a_model_that_is_not_there_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["train", "--model", str(missing)]) == 2
    assert f"model '{missing}': no such directory" in one_line_error(capsys)
    assert main(["train", "--model", str(tmp_path)]) == 2  # a directory, but no model in it
    assert f"model '{tmp_path}': the directory holds no" in one_line_error(capsys)


def test_a_saved_model_directory_trains(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    build_tiny_model().save_pretrained(model_dir)
    textenv.models.load_tokenizer(TINY_MODEL).save_pretrained(model_dir)
    argv = ["train", *TINY_RUN, "--model", str(model_dir), "--iterations", "1", "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 0, capsys.readouterr().err


def test_resuming_a_directory_that_is_not_there_is_one_line(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert f"--resume: {tmp_path / 'nowhere'}: no such directory" in one_line_error(capsys)
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert f"no checkpoint in {tmp_path}" in one_line_error(capsys)


def test_a_run_takes_file_and_flags_and_a_resume_keeps_the_checkpoint_options(tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text("lam: 0.5\nlearning_rate: 1e-4\niterations: 2\n")
    assert main(["train", *TINY_RUN, "--config", str(config), "--lr", "2e-3", "--output-dir", str(run)]) == 0
    state = json.loads((run / "checkpoints" / "iter_000002" / "trainer_state.json").read_text())
    assert state["config"]["lam"] == 0.5 and state["config"]["learning_rate"] == 2e-3  # the flag over the file
    assert state["config"]["run_dir"] == str(run)

    argv = ["train", *TINY_RUN, "--iterations", "3", "--resume", str(run), "--output-dir", str(run),
            "--sample-every", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert f"resuming from {run / 'checkpoints' / 'iter_000002'}" in capsys.readouterr().out
    state = json.loads((run / "checkpoints" / "iter_000003" / "trainer_state.json").read_text())
    assert state["num_iterations"] == 3
    assert state["config"]["lam"] == 0.5 and state["config"]["learning_rate"] == 2e-3  # the run's, not the defaults
    assert state["config"]["sample_every"] == 1  # a flag given with --resume overrides the checkpoint's


def test_an_interrupted_run_saves_a_checkpoint_and_exits_130(tmp_path, capsys, fresh_default_pm):
    @textenv.reward(name="presses_ctrl_c")
    def presses_ctrl_c(completions):
        os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C during the first rollout
        return [0.0] * len(completions)

    run = tmp_path / "run"
    argv = ["train", *TINY_RUN, "--reward", "presses_ctrl_c", "--iterations", "5", "--output-dir", str(run)]
    assert main(argv) == 130
    assert "interrupted after iteration 1" in capsys.readouterr().out
    assert (run / "checkpoints" / "iter_000001" / "trainer_state.json").exists()


def history_of(run, iteration):
    state = json.loads((run / "checkpoints" / f"iter_{iteration:06d}" / "trainer_state.json").read_text())
    return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in state["history"]]


def test_a_resume_without_flags_continues_the_same_run_as_an_unbroken_one(tmp_path, capsys):
    """The issue's case: a "sentiment + length" run resumed with no --reward, --model or --batch-size kept the
    CLI defaults (another reward, the default model's tokenizer); now it continues as recorded."""
    run_flags = ["--model", TINY_MODEL, "--reward", "sentiment + length", "--batch-size", "4", "--mini-batch-size",
                 "2", "--max-new-tokens", "4", "--eval-prompts", "0", "--precision", "fp32", "--no-progress"]
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    assert main(["train", *run_flags, "--iterations", "4", "--output-dir", str(unbroken)]) == 0
    assert main(["train", *run_flags, "--iterations", "4", "--checkpoint-every", "1", "--output-dir",
                 str(resumed)]) == 0
    shutil.rmtree(resumed / "checkpoints" / "iter_000004")  # as if stopped after iteration 3
    capsys.readouterr()
    assert main(["train", "--resume", str(resumed)]) == 0  # nothing else: the run's options, its output dir
    out = capsys.readouterr().out
    assert f"resuming from {resumed / 'checkpoints' / 'iter_000003'}" in out
    assert "reward = sentiment + length; iteration 3 of 4" in out and "applying" not in out
    state = json.loads((resumed / "checkpoints" / "iter_000004" / "trainer_state.json").read_text())
    assert state["config"]["batch_size"] == 4 and state["run"]["model"] == TINY_MODEL
    assert [t["source"] for t in state["run"]["reward_terms"]] == ["sentiment", "length"]
    got, expected = history_of(resumed, 4), history_of(unbroken, 4)
    assert len(got) == 4
    for a, b in zip(got, expected):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_with_resume_a_flag_that_changes_the_run_is_refused_by_name_and_others_are_applied(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--reward", "sentiment + length", "--iterations", "1", "--output-dir",
                 str(run)]) == 0
    capsys.readouterr()
    argv = ["train", "--resume", str(run), "--batch-size", "8", "--mini-batch-size", "4", "--reward", "length",
            "--model", "smollm2-135m", "--max-new-tokens", "4"]  # the last one is the run's own value: fine
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "--batch-size 8 differs from the run's 4" in err and "--mini-batch-size 4 differs from the run's 2" in err
    assert "--reward 'length' differs from the run's 'sentiment + length'" in err
    assert "--model 'smollm2-135m' differs from the run's 'tiny-random'" in err and "max-new-tokens" not in err
    assert f"start a new run with --model {run / 'checkpoints' / 'iter_000001' / 'model'}" in err

    elsewhere = tmp_path / "elsewhere"
    argv = ["train", "--resume", str(run), "--reward", "sentiment+length", "--iterations", "2", "--checkpoint-every",
            "1", "--device", "cpu", "--output-dir", str(elsewhere)]  # the same reward spelled otherwise: no change
    assert main(argv) == 0, capsys.readouterr().err
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume: applying")]
    assert lines == [f"resume: applying --iterations 2 (the run had 1), --checkpoint-every 1 (the run had 10), "
                     f"--device cpu (the run had auto), --output-dir {elsewhere} (the run had {run})"]
    assert (elsewhere / "checkpoints" / "iter_000002" / "manifest.json").exists()


def test_resume_of_a_run_with_a_damaged_newest_checkpoint_falls_back_and_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--iterations", "2", "--checkpoint-every", "1", "--output-dir", str(run)]) == 0
    damaged = run / "checkpoints" / "iter_000002" / "model" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoints" / "iter_000002")]) == 2  # named: no fallback
    assert f"{damaged}: 1000 bytes where the manifest says" in one_line_error(capsys)

    assert main(["train", "--resume", str(run), "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "damaged" in line]
    assert len(notes) == 1 and notes[0].startswith(f"resume: skipped 1 damaged checkpoint(s) (iter_000002: {damaged}")
    assert notes[0].endswith("resuming from the newest complete one, iter_000001")
    assert json.loads((run / "checkpoints" / "iter_000003" / "trainer_state.json").read_text())["num_iterations"] == 3


def test_an_output_dir_that_cannot_be_written_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["train", *TINY_RUN, "--output-dir", str(a_file)]) == 2
    assert f"--output-dir {a_file}: a file, not a directory" in one_line_error(capsys)
    assert main(["train", *TINY_RUN, "--output-dir", str(a_file / "run")]) == 2
    assert f"--output-dir {a_file / 'run'}: cannot write there (Not a directory)" in one_line_error(capsys)
    assert main(["train", "--resume", str(a_file)]) == 2
    assert f"--resume: {a_file}: a file, not a checkpoint or run directory" in one_line_error(capsys)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_dir_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["train", *TINY_RUN, "--output-dir", str(locked)]) == 2
        assert f"--output-dir {locked}: cannot write there (Permission denied)" in one_line_error(capsys)
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's sysfs, which no one may write into")
def test_an_output_dir_on_a_filesystem_that_refuses_writes_is_one_line(capsys):
    assert main(["train", *TINY_RUN, "--output-dir", "/sys/kernel/textenv-run"]) == 2
    assert "--output-dir /sys/kernel/textenv-run: cannot write there (" in one_line_error(capsys)
