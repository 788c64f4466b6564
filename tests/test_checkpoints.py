"""Checkpoints: the run's definition recorded and restored, atomic writes with a verified manifest, the latest
complete checkpoint chosen by name, damaged files refused by name, a full disk, and SIGKILL at random moments."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import gymnasium as gym
import patience
import pytest

from textenv.agents import PPO, CheckpointError, DiskFullError, checkpoint
from textenv.cli import main

PROMPTS = ["hello", "the movie was", "a", "once upon"]
ROOT = Path(__file__).resolve().parents[1]


def make_env(reward="length(target=4, normalize=true)", max_new_tokens=8, prompts=PROMPTS):
    return gym.make("textenv/TextGen-v0", model="tiny-random", prompts=prompts,
                    max_new_tokens=max_new_tokens, reward=reward)


def small_agent(env=None, **options):
    defaults = dict(batch_size=8, mini_batch_size=4, ppo_epochs=2, precision="fp32", progress=False, seed=0,
                    lr_schedule="constant", reward_norm=True)
    return PPO(env if env is not None else make_env(), **{**defaults, **options})


def scalars(history):
    return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in history]


def trained_run(tmp_path, iterations=3, **options):
    """A run directory with one checkpoint per iteration, all kept."""
    agent = small_agent(run_dir=str(tmp_path / "run"), checkpoint_every=1, keep_checkpoints=10, **options)
    agent.learn(total_episodes=8 * iterations)
    return agent, tmp_path / "run"


def lucky_reward(completions):
    """A module-level reward function: recorded by its qualified name, importable when loading."""
    return [float(len(c) % 3) for c in completions]


# ------------------------------------------------------------------ what a checkpoint holds


def test_the_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    path = small_agent().save(tmp_path / "ckpt")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "textenv-checkpoint/1"
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {"model/model.safetensors", "value.safetensors", "optimizer.safetensors", "rng.safetensors",
            "prompts.json", "trainer_state.json"} <= on_disk
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old"))
    assert not list(path.rglob("*.pt"))  # tensors in safetensors only: loading runs no pickle


def test_a_checkpoint_records_the_runs_definition(tmp_path):
    agent = small_agent(make_env(reward="length(target=4, normalize=true) + 0.5*repetition", max_new_tokens=6))
    state = json.loads((agent.save(tmp_path / "ckpt") / "trainer_state.json").read_text())
    run = state["run"]
    assert run["model"] == "tiny-random" and run["tokenizer"] == "ByT5Tokenizer"
    assert run["prompts"]["count"] == 4 and len(run["prompts"]["sha256"]) == 64
    assert run["reward"] == "length(target=4, normalize=true) + 0.5*repetition"
    assert [(t["source"], t["weight"], t["normalize"], t["options"]) for t in run["reward_terms"]] == [
        ("length", 1.0, True, {"target": 4}), ("repetition", 0.5, False, {})]
    assert (run["max_new_tokens"], run["prompt_width"], run["eos_token_ids"], run["vocab_size"]) == (
        6, agent.task.prompt_width, agent.task.eos_ids, agent.task.vocab_size)
    assert state["config"]["batch_size"] == 8 and state["config"]["reward_norm"] is True  # every agent option
    assert json.loads((tmp_path / "ckpt" / "prompts.json").read_text())["texts"] == PROMPTS


def test_load_without_an_env_rebuilds_it_and_continues_the_same_run(tmp_path):
    agent = small_agent(learning_rate=1e-3)
    agent.learn(total_episodes=16)
    path = agent.save(tmp_path / "ckpt")
    expected = agent.train_iteration()

    resumed = PPO.load(path)  # no env: the checkpoint's tokenizer, prompts, reward and options
    assert resumed.task.prompts == PROMPTS and resumed.task.max_new_tokens == 8
    assert resumed.task.rewards.names == ["length"] and resumed.task.rewards.terms[0].spec.normalize
    got = resumed.train_iteration()
    assert scalars([got])[0] == pytest.approx(scalars([expected])[0], rel=1e-5, abs=1e-7)


def test_a_reward_function_is_recorded_by_qualified_name_and_imported_when_loading(tmp_path):
    agent = small_agent(make_env(reward=[lucky_reward, "length(target=4)"]))
    path = agent.save(tmp_path / "ckpt")
    terms = json.loads((path / "trainer_state.json").read_text())["run"]["reward_terms"]
    assert terms[0]["source"] == "lucky_reward" and terms[0]["function"].endswith("test_checkpoints:lucky_reward")
    assert PPO.load(path).task.rewards.terms[0].spec.fn is lucky_reward

    def local_reward(completions):
        return [0.0] * len(completions)

    path = small_agent(make_env(reward=local_reward)).save(tmp_path / "local")
    with pytest.raises(CheckpointError, match=r"reward term 'local_reward' is the function .*local_reward, which "
                                              r"cannot be imported here .*give PPO.load an env"):
        PPO.load(path)
    assert PPO.load(path, make_env(reward=local_reward)).num_iterations == 0  # with the env, it loads


def test_an_env_that_differs_from_the_run_is_refused_naming_what_differs(tmp_path):
    path = small_agent().save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError) as refused:
        PPO.load(path, make_env(reward="length(target=5)", max_new_tokens=6, prompts=["hello", "other"]))
    message = str(refused.value)
    assert "\n" not in message
    assert "reward: 'length(target=5)' where the checkpoint has 'length(target=4, normalize=true)'" in message
    assert "max_new_tokens: 6 where the checkpoint has 8" in message
    assert "prompts: 2 from a list of prompts where the checkpoint has 4" in message
    assert PPO.load(path, make_env(reward="length(normalize=true, target=4)")).num_iterations == 0  # same terms


# ------------------------------------------------------------------ choosing the checkpoint


def test_latest_is_the_highest_complete_iteration_never_the_newest_mtime_nor_a_temporary(tmp_path):
    _, run = trained_run(tmp_path)
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["iter_000001", "iter_000002", "iter_000003"]
    future = time.time() + 3600
    os.utime(folder / "iter_000001", (future, future))  # as `cp -r` or a touch leaves them
    shutil.copytree(folder / "iter_000003", folder / "iter_000004.tmp")  # complete, but a temporary
    shutil.copytree(folder / "iter_000003", folder / "iter_000005.old")
    assert checkpoint.latest(run) == (folder / "iter_000003", [])
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)  # every mtime new, in whatever order the copy made them
    assert checkpoint.latest(copy)[0] == copy / "checkpoints" / "iter_000003"
    with pytest.raises(CheckpointError, match=r"iter_000004.tmp is the temporary directory of a checkpoint write"):
        PPO.load(folder / "iter_000004.tmp")


def test_last_good_counts_by_its_recorded_iteration(tmp_path):
    """A run stopped by an error after iteration N writes checkpoints/last-good; resuming the run takes it when N
    is the highest (an iter_N of the same iteration is preferred)."""
    _, run = trained_run(tmp_path)
    folder = run / "checkpoints"
    shutil.copytree(folder / "iter_000003", folder / "last-good")
    assert checkpoint.latest(run)[0] == folder / "iter_000003"
    shutil.rmtree(folder / "iter_000003")
    assert checkpoint.latest(run)[0] == folder / "last-good"


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    agent = small_agent()
    path = agent.save(tmp_path / "ckpt")
    agent.train_iteration()
    agent.save(path)
    assert PPO.load(path).num_iterations == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp, no .old


def test_a_kill_mid_write_leaves_a_tmp_that_resume_ignores_and_the_next_save_removes(tmp_path, capsys):
    """The issue's case: killed after trainer_state.json was created but before it was written."""
    agent, run = trained_run(tmp_path, iterations=2)
    tmp = run / "checkpoints" / "iter_000003.tmp"
    shutil.copytree(run / "checkpoints" / "iter_000002", tmp)
    (tmp / "manifest.json").unlink()
    (tmp / "trainer_state.json").write_text("")
    resumed = PPO.load(checkpoint.latest(run)[0])
    assert resumed.num_iterations == 2
    resumed.learn(total_episodes=8)
    assert not tmp.exists() and (run / "checkpoints" / "iter_000003" / "manifest.json").exists()


# ------------------------------------------------------------------ damaged checkpoints


def reseal(path: Path) -> None:
    """Write a manifest that agrees with the files as they are (checkpoint.seal refuses a truncated safetensors)."""
    files = {p.relative_to(path).as_posix(): {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes())
                                              .hexdigest()}
             for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"}
    (path / "manifest.json").write_text(json.dumps({"format": checkpoint.FORMAT, "files": files}))


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


DAMAGE = {
    "truncated model": ("model/model.safetensors", _truncate, r"truncated"),
    "truncated optimizer": ("optimizer.safetensors", _truncate, r"truncated"),
    "truncated rng": ("rng.safetensors", _truncate, r"truncated"),
    "garbage state": ("trainer_state.json", lambda f: f.write_text("{not json"), r"not readable JSON|sha256|bytes"),
    "deleted value head": ("value.safetensors", Path.unlink, r"missing"),
}


@pytest.mark.parametrize("resealed", [False, True], ids=["manifest", "resealed"])
@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_the_file_never_loaded_with_defaults(tmp_path, damage, resealed):
    """Caught by the manifest; and, should the manifest agree (resealed after the damage), by the load itself:
    a missing value head is an error, never a fresh one."""
    name, spoil, reason = DAMAGE[damage]
    path = small_agent().save(tmp_path / "ckpt")
    spoil(path / name)
    if resealed:
        reseal(path)
        reason = {"trainer_state.json": "not readable JSON", "value.safetensors": "missing"}.get(name, "truncated")
    with pytest.raises(CheckpointError) as refused:
        PPO.load(path)
    message = str(refused.value)
    assert str(path / name) in message and "\n" not in message, message
    assert any(word in message for word in reason.split("|")) or pytest.fail(message)


def test_a_checkpoint_without_its_manifest_is_refused(tmp_path):
    path = small_agent().save(tmp_path / "ckpt")
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest.json: missing, so .*ckpt is not a complete checkpoint"):
        PPO.load(path)


# ------------------------------------------------------------------ a full disk, an interrupted write


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk full", "ctrl-c"])
def test_a_write_that_fails_midway_removes_the_partial_checkpoint_and_keeps_the_older(tmp_path, monkeypatch, error):
    agent, run = trained_run(tmp_path, iterations=1)
    write_file = checkpoint.write_file

    def fails_midway(path, data):
        if path.name == "optimizer.safetensors":
            path.write_bytes(data[: len(data) // 2])  # half of it reached the disk
            raise error
        write_file(path, data)

    monkeypatch.setattr(checkpoint, "write_file", fails_midway)
    agent.train_iteration()
    with pytest.raises(DiskFullError if isinstance(error, OSError) else KeyboardInterrupt) as failed:
        agent.save_checkpoint()
    if isinstance(error, OSError):
        message = str(failed.value.strerror)
        assert message.startswith("no space left on ") and f"while saving {run / 'checkpoints' / 'iter_000002'}" \
            in message and "partial checkpoint was removed" in message
        assert failed.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001"]
    monkeypatch.undo()
    assert PPO.load(checkpoint.latest(run)[0]).num_iterations == 1


def test_a_full_disk_in_textenv_train_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_file", no_space)
    argv = ["train", "--model", "tiny-random", "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4",
            "--eval-prompts", "0", "--precision", "fp32", "--no-progress", "--iterations", "2", "--checkpoint-every",
            "1", "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("textenv: error: no space left on ") and "\n" not in err, err
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


# ------------------------------------------------------------------ SIGKILL at random moments


def test_sigkill_at_random_moments_then_resume_always_continues_the_same_run(tmp_path):
    """20 SIGKILLs of `textenv train` (a third or more while a checkpoint is being written); after each,
    `--resume RUN_DIR` must load the newest complete checkpoint, and every run that reaches its end must have
    the history of a run that was never killed (benchmarks/fault_injection.py, which the docs run with 200)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fault_injection.py"), "--kills", "20", "--seed", "1",
           "--workdir", str(tmp_path)]
    result = patience.run(cmd, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "kills survived: 20/20 (100 %); every finished run's history equals the unbroken run's" in result.stdout

