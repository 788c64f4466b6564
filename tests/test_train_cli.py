"""``textenv train``: flags generated from PPOConfig, a --config file, one-line errors, exit codes."""

from __future__ import annotations

import dataclasses
import json
import os
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
