"""PPO in several processes: ``accelerate launch`` with 2 CPU processes (gloo), as a user runs it.

Each test starts a real launch (about 20 s on 2 cores): one PPO iteration compared across the
processes and with one process given the same episodes; ``textenv train`` under the launcher,
and a resume of its 2-process checkpoint; LoRA under the launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import patience
import ppo_process
import pytest
import safetensors.torch
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

from textenv.agents import PPO
from textenv.cli import main
from textenv.generation import Episodes
from textenv.models import TINY_MODEL

HERE = Path(__file__).parent


def launch(*argv: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch`` on CPU processes, as the scaling guide says; fails the test with its output."""
    with socket.socket() as s:  # a free port for the processes' rendezvous on 127.0.0.1
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
               "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *argv]
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))  # ppo_process.py imports
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = patience.run(command, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def read_episodes(out: Path, k: int) -> dict:
    return {**safetensors.torch.load_file(out / f"episodes{k}.safetensors"),
            **json.loads((out / f"episodes{k}.json").read_text())}


def concatenated(parts: list[dict]) -> Episodes:
    """The processes' episodes as one batch, in process order (prompts left-padded, completions right-padded)."""
    def pad(name: str, left: bool) -> torch.Tensor:
        width = max(p[name].shape[1] for p in parts)
        padded = []
        for p in parts:
            missing = width - p[name].shape[1]
            padded.append(torch.nn.functional.pad(p[name], (missing, 0) if left else (0, missing)))
        return torch.cat(padded)

    return Episodes(
        prompts=[x for p in parts for x in p["prompts"]],
        completions=[x for p in parts for x in p["completions"]],
        rewards=torch.cat([p["rewards"] for p in parts]).numpy(),
        reward_terms={name: np.concatenate([p["reward_terms"][name] for p in parts])
                      for name in parts[0]["reward_terms"]},
        prompt_ids=pad("prompt_ids", left=True), prompt_mask=pad("prompt_mask", left=True),
        completion_ids=pad("completion_ids", left=False), completion_mask=pad("completion_mask", left=False),
        token_rewards=pad("token_rewards", left=False),
    )


@pytest.fixture(scope="module", params=["gae", "rloo"])
def two_process_iteration(request, tmp_path_factory) -> Path:
    """One iteration in 2 processes: with the value head, and critic-free (groups of 2, spread over all)."""
    out = tmp_path_factory.mktemp(f"two_processes_{request.param}")
    launch(str(HERE / "ppo_process.py"), str(out), "--advantage", request.param)
    (out / "advantage").write_text(request.param)
    return out


def test_after_an_iteration_both_processes_hold_the_same_weights(two_process_iteration):
    out = two_process_iteration
    first, second = (safetensors.torch.load_file(out / f"weights{k}.safetensors") for k in (0, 1))
    initial = safetensors.torch.load_file(out / "initial.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert any(not torch.equal(first[name], initial[name]) for name in first)  # it did train
    prompts = [read_episodes(out, k)["prompts"] for k in (0, 1)]
    assert len(prompts[0]) == len(prompts[1]) == ppo_process.OPTIONS["batch_size"] // 2  # each its share
    completions = [read_episodes(out, k)["completions"] for k in (0, 1)]
    assert (prompts[0], completions[0]) != (prompts[1], completions[1])  # each from its own random streams


def test_the_reward_terms_are_normalized_with_the_whole_batch(two_process_iteration):
    out = two_process_iteration
    states = [json.loads((out / f"state{k}.json").read_text()) for k in (0, 1)]
    assert states[0]["rewards"] == states[1]["rewards"]
    completions = [c for k in (0, 1) for c in read_episodes(out, k)["completions"]]
    expected = RunningMeanStd()
    expected.update(np.array(ppo_process.lowercase_share(completions)))  # one update with all 8 episodes
    stats = states[0]["rewards"]["lowercase_share"]
    assert stats["count"] == pytest.approx(expected.count)
    assert stats["mean"] == pytest.approx(float(expected.mean), abs=1e-12)
    assert stats["var"] == pytest.approx(float(expected.var), abs=1e-12)


def test_two_processes_match_one_process_given_the_same_episodes(two_process_iteration):
    """The whole-batch statistics (score normalization, advantage whitening, the KL controller's KL, the
    logged means) and the token-weighted gradient of each mini-batch are those of one process with
    the same 8 episodes, in fp32, to rounding."""
    out = two_process_iteration
    advantage = ppo_process.advantage_options((out / "advantage").read_text())
    agent = PPO(ppo_process.task(), **ppo_process.OPTIONS, **advantage)
    agent.policy.load_state_dict(safetensors.torch.load_file(out / "initial.safetensors"), strict=False)
    batch, stats = agent.make_batch(concatenated([read_episodes(out, k) for k in (0, 1)]))
    stats.update(agent.update(batch))

    two = json.loads((out / "state0.json").read_text())
    assert two["processes"] == 2 and agent.processes.num == 1
    assert float(agent.kl_ctl.value) == pytest.approx(two["kl_coef"], rel=1e-6)
    assert [float(agent.score_stats.mean), float(agent.score_stats.var)] == pytest.approx(two["score_stats"], rel=1e-9)
    for key, value in two["stats"].items():
        assert stats[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    weights = safetensors.torch.load_file(out / "weights0.safetensors")
    after = ppo_process.policy_tensors(agent)
    for name, tensor in after.items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=1e-5, msg=name)  # of moves up to 2e-3
    largest = max((tensor - weights[name]).abs().max().item() for name, tensor in after.items())
    moved = max((weights[name] - initial).abs().max().item() for name, initial in
                safetensors.torch.load_file(out / "initial.safetensors").items())
    print(f"\n2 processes vs 1 on the same episodes: largest weight difference {largest:.2e} "
          f"(the update moved weights by up to {moved:.2e})")


def test_textenv_train_under_accelerate_launch_and_its_two_process_checkpoint_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["-m", "textenv", "train", "--model", TINY_MODEL, "--batch-size", "4", "--mini-batch-size", "2",
            "--max-new-tokens", "4", "--eval-prompts", "2", "--no-progress", "--no-keep-cpu-memory",
            "--checkpoint-every", "1", "--sample-every", "1", "--iterations", "2"]
    done = launch(*argv, "--output-dir", str(run))
    assert done.stdout.count("run directory:") == 1  # the main process speaks for both
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert len((run / "samples.jsonl").read_text().splitlines()) == 2 * 2  # the main process's 2 rows, twice
    state = json.loads((run / "checkpoints" / "iter_000002" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["num_episodes"] == 8
    assert len(state["process_prompt_rngs"]) == 2

    # The second iteration again from the first's checkpoint: each process continues its own streams.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "iter_000002")
    launch(*argv, "--resume", str(resumed), "--output-dir", str(resumed))
    for part in ("model/model.safetensors", "value.safetensors", "optimizer.safetensors"):
        unbroken = safetensors.torch.load_file(run / "checkpoints" / "iter_000002" / part)
        again = safetensors.torch.load_file(resumed / "checkpoints" / "iter_000002" / part)
        assert unbroken.keys() == again.keys()
        assert all(torch.equal(unbroken[name], again[name]) for name in unbroken), part

    # One process cannot continue two processes' streams: refused in one line, before anything loads.
    assert main(["train", "--resume", str(run), "--iterations", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "written by a run of 2 process(es) and this one has 1" in err


def test_a_separate_value_model_on_an_untied_model_trains_under_accelerate_launch(tmp_path):
    """The value model is the decoder without the LM head: an untied head in it got no gradient, and DDP stopped
    the first update with "Expected to have finished reduction in the prior iteration"."""
    run = tmp_path / "run"
    done = launch("-m", "textenv", "train", "--model", "tiny-random-untied", "--value-model", "separate",
                  "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4", "--eval-prompts", "0",
                  "--no-progress", "--no-keep-cpu-memory", "--iterations", "2", "--output-dir", str(run))
    assert "x 2 processes" in done.stdout  # the run says how many processes it runs on
    state = json.loads((run / "checkpoints" / "iter_000002" / "trainer_state.json").read_text())
    assert state["num_iterations"] == 2 and state["config"]["value_model"] == "separate"


CTRL_C_IN_ONE_PROCESS = """
import os, sys
import ppo_process, textenv
from textenv.agents import PPO

calls = []

@textenv.reward(name="ctrl_c_in_process_1")
def ctrl_c_in_process_1(completions):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 2:
        raise KeyboardInterrupt  # a Ctrl-C that reaches this process during its second reward call
    return [0.0] * len(completions)

task = ppo_process.TextTask.build(model="tiny-random", prompts=ppo_process.PROMPTS, reward="ctrl_c_in_process_1",
                                  max_new_tokens=4)
agent = PPO(task, **{**ppo_process.OPTIONS, "run_dir": sys.argv[1], "checkpoint_every": 0})
try:
    agent.learn(8 * 5)
except KeyboardInterrupt as exc:
    print(f"process {agent.processes.index}: {type(exc).__name__} after iteration {agent.num_iterations}", flush=True)
"""


def test_a_ctrl_c_in_one_processs_reward_call_stops_every_process_the_same_way(tmp_path):
    """Both processes take the interrupt's path (the same collectives), and the checkpoint of the last complete
    iteration is written once, with both processes' streams."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_IN_ONE_PROCESS)
    out = launch(str(script), str(tmp_path / "run")).stdout
    assert "process 0: RewardInterrupted after iteration 1" in out and "process 1: RewardInterrupted after " \
        "iteration 1" in out, out[-2000:]
    state = json.loads((tmp_path / "run" / "checkpoints" / "iter_000001" / "trainer_state.json").read_text())
    assert state["num_iterations"] == 1 and len(state["process_prompt_rngs"]) == 2


def test_lora_under_accelerate_launch_trains_the_same_adapter_in_both_processes(tmp_path):
    launch(str(HERE / "ppo_process.py"), str(tmp_path), "--lora-rank", "4")
    first, second = (safetensors.torch.load_file(tmp_path / f"weights{k}.safetensors") for k in (0, 1))
    initial = safetensors.torch.load_file(tmp_path / "initial.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)
    changed = {name for name in first if not torch.equal(first[name], initial[name])}
    assert changed and all("lora_" in name or not name.startswith("lm.") for name in changed)  # adapters, head


OWN_ACCELERATOR = """
import sys
from accelerate import Accelerator
accelerator = Accelerator(cpu=True, mixed_precision=sys.argv[1])  # the script's own, made before the agent
import ppo_process
from textenv.agents import PPO
try:
    agent = PPO(ppo_process.task(), **{**ppo_process.OPTIONS, "precision": "auto"})
except ValueError as exc:
    raise SystemExit(print("refused:", exc))
agent.learn(8)
print(f"process {agent.processes.index}: bf16={agent.bf16}, {agent.num_episodes} episodes")
"""


@pytest.mark.parametrize("precision, says", [
    ("bf16", ["process 0: bf16=True, 8 episodes", "process 1: bf16=True, 8 episodes"]),
    ("fp16", ["refused: the script's Accelerator has mixed_precision='fp16', which PPO does not support"]),
])
def test_the_scripts_own_accelerator_is_shared_and_its_precision_followed(tmp_path, precision, says):
    script = tmp_path / "own_accelerator.py"
    script.write_text(OWN_ACCELERATOR)
    out = launch(str(script), precision).stdout  # the launch itself says --mixed_precision no
    assert all(line in out for line in says), out[-2000:]


@pytest.mark.parametrize("variables, message", [
    ({"ACCELERATE_USE_FSDP": "true"}, "accelerate launches FSDP here (ACCELERATE_USE_FSDP), which textenv does not"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "accelerate launches DeepSpeed here"),
    ({"ACCELERATE_MIXED_PRECISION": "fp16"}, "accelerate's --mixed_precision fp16 is not supported"),
])
def test_a_launch_the_agent_cannot_train_is_refused_in_one_line_before_anything_loads(
    monkeypatch, capsys, variables, message
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # as accelerate launch sets it
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert main(["train", "--model", "no-such-model"]) == 2  # the model would be the next complaint
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    with pytest.raises(ValueError, match=message.split(" (")[0]):
        PPO(ppo_process.task())
