"""A PPO agent's checkpoint: what it holds, written from an agent, and an agent restored from it.

A checkpoint directory (written atomically with a manifest, :mod:`textenv.agents.checkpoint`) holds:

* ``model/``: the policy as a transformers directory with its tokenizer (a LoRA policy: its adapter);
* ``value.safetensors``: the value head (and a separate value model);
* ``optimizer.safetensors``: Adam's moments and steps (absent from a weights-only checkpoint);
* ``rng.safetensors``: every random stream, each process's;
* ``reference/``: the KL reference, only where it is not the env's model (``PPO(env, model=sft_model)``);
* ``prompts.json`` and ``trainer_state.json``: the prompt texts, the run's definition, the config, counters,
  the KL controller, the score and reward-term statistics, the history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.torch
import torch
from transformers.utils import logging as hf_logging

from textenv.agents import checkpoint, lora, run_definition, run_dir
from textenv.agents.checkpoint import STATE_FILE, CheckpointError
from textenv.agents.policy import frozen_copy
from textenv.agents.ppo_config import PPOConfig
from textenv.agents.processes import Processes
from textenv.devices import launched_processes, resolve_device
from textenv.models import load_causal_lm

if TYPE_CHECKING:
    from textenv.agents.ppo import PPO

VALUE_FILE = "value.safetensors"
"""The value head (and a separate value model), beside the policy's ``model/``."""
OPTIMIZER_FILE = "optimizer.safetensors"
"""Adam's moments and steps as tensors; its parameter groups as JSON in the safetensors metadata."""
RNG_FILE = "rng.safetensors"
"""torch's global RNG state and the sampling and shuffling generators' (and CUDA's)."""


# ------------------------------------------------------------------ writing


def save(agent: PPO, path: str | Path | None, *, optimizer: bool) -> Path:
    """:meth:`textenv.agents.PPO.save_checkpoint`'s work: every process calls it, the main one writes."""
    if path is None:
        if not agent.run_dir:
            raise ValueError("no run_dir: give save_checkpoint a path")
        path = agent.run_dir / run_dir.CHECKPOINTS / f"iter_{agent.num_iterations:06d}"
    path = Path(path)
    streams = agent.processes.objects((rng_state(agent), agent.prompt_rng.bit_generator.state))
    failure = None
    if agent.processes.is_main:
        try:
            checkpoint.write_atomically(path, lambda tmp: write(agent, tmp, optimizer, streams))
        except Exception as error:  # noqa: BLE001 - re-raised below, once every process knows
            failure = error
    if agent.processes.any(failure is not None):
        raise failure or CheckpointError(f"the main process could not write {path}")
    agent.last_checkpoint = (path.resolve(), agent.num_iterations, optimizer)
    if agent.processes.is_main and agent.run and path.parent == agent.run_dir / run_dir.CHECKPOINTS:
        run_dir.prune(path.parent, agent.config.keep_checkpoints)
    return path


def save_unless_saved(agent: PPO) -> Path:
    """The run's checkpoint of this iteration, with the optimizer: written unless the periodic one
    (or the one resumed from) is it already; rewriting it would only open a window in which a kill
    leaves the iteration without a checkpoint."""
    path = agent.run_dir / run_dir.CHECKPOINTS / f"iter_{agent.num_iterations:06d}"
    written = agent.last_checkpoint == (path.resolve(), agent.num_iterations, True) and path.is_dir()
    if agent.processes.objects(written)[0]:  # the main process's view: it is the one that writes
        return path
    return save(agent, path, optimizer=True)


def write(agent: PPO, tmp: Path, optimizer: bool, streams: list[tuple[dict[str, torch.Tensor], dict]]) -> None:
    """Fill a checkpoint directory from ``agent``; ``trainer_state.json`` last (the manifest comes after it).

    Args:
        agent: the agent.
        tmp: the empty directory to fill.
        optimizer: also write Adam's state.
        streams: every process's (torch random states, prompt generator state), in rank order.
    """
    with quiet_transformers_bars():  # "Writing model shards" would break our bar's line
        # A LoRA policy's is its adapter; peft's "auto" would look the base up on the hub to see whether
        # the vocabulary changed (it cannot: no embedding layer trains).
        agent.policy.lm.save_pretrained(tmp / "model", **({"save_embedding_layers": False} if agent.lora else {}))
    if hasattr(agent.task.tokenizer, "save_pretrained"):
        agent.task.tokenizer.save_pretrained(tmp / "model")
    heads = head_tensors(agent.policy)
    if heads:
        checkpoint.write_file(tmp / VALUE_FILE, safetensors.torch.save(heads))
    if agent.reference is not None and not agent.lora and not agent.reference_is_env_model:  # PPO(env, model=sft)
        with quiet_transformers_bars():
            agent.reference.save_pretrained(tmp / "reference")
    if optimizer:
        checkpoint.write_file(tmp / OPTIMIZER_FILE, checkpoint.optimizer_bytes(agent.optimizer.state_dict()))
    rng = {  # process 0's under the names a one-process run uses, process k's as "process{k}.NAME"
        (f"process{k}.{name}" if k else name): tensor.contiguous()
        for k, (state, _) in enumerate(streams) for name, tensor in state.items()
    }
    checkpoint.write_file(tmp / RNG_FILE, safetensors.torch.save(rng))
    checkpoint.write_json(tmp / run_definition.PROMPTS_FILE, run_definition.prompts_record(agent.task))
    checkpoint.write_json(tmp / STATE_FILE, trainer_state(agent, optimizer, [prompt for _, prompt in streams]))


def trainer_state(agent: PPO, optimizer: bool, prompt_streams: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``trainer_state.json`` holds (JSON-able)."""
    return {
        "format": checkpoint.FORMAT,
        "config": dataclasses.asdict(agent.config),
        "run": {**run_definition.describe_task(agent.task), **lora_base_record(agent)},
        "metadata": agent.metadata,
        "optimizer": optimizer,
        "num_iterations": agent.num_iterations,
        "num_episodes": agent.num_episodes,
        "kl_controller": agent.kl_ctl.state_dict(),
        "score_stats": {"mean": float(agent.score_stats.mean), "var": float(agent.score_stats.var),
                        "count": float(agent.score_stats.count)},
        "reward_pipeline": agent.task.rewards.state_dict(),
        "num_processes": len(prompt_streams),
        "prompt_rng": prompt_streams[0],
        **({"process_prompt_rngs": prompt_streams} if len(prompt_streams) > 1 else {}),
        "history": agent.history,
    }


def head_tensors(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What ``value.safetensors`` holds: the policy's state outside ``lm.``, a tied weight once."""
    heads, stored = {}, set()
    for key, tensor in policy.state_dict().items():
        if key.startswith("lm.") or tensor.data_ptr() in stored:  # a tied weight comes back through its tie
            continue
        stored.add(tensor.data_ptr())
        heads[key] = tensor.detach().contiguous()
    return heads


def lora_base_record(agent: PPO) -> dict[str, str]:
    """A LoRA run's ``lora_base``: where its base weights come from (``model/`` holds the adapter only)."""
    if not agent.lora:
        return {}
    return {run_definition.LORA_BASE: lora.base_source(agent.policy.lm)}


def rng_state(agent: PPO) -> dict[str, torch.Tensor]:
    """torch's global random state and the agent's sampling and shuffling generators' (and CUDA's)."""
    state = {
        "torch": torch.get_rng_state(),
        "sampling": agent.sample_generator.get_state(),
        "shuffle": agent.shuffle_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(agent: PPO, state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    agent.sample_generator.set_state(state["sampling"])
    agent.shuffle_generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------ loading


def load(cls: type[PPO], path: Path, env: Any, overrides: dict[str, Any]) -> PPO:
    """:meth:`textenv.agents.PPO.load`'s work (see there for the arguments and errors)."""
    manifest = checkpoint.verify(path)
    state = checkpoint.read_json(path / STATE_FILE)
    try:
        run = state["run"]
        config_options = {**state["config"], **overrides}
    except (KeyError, TypeError):
        raise CheckpointError(f"{path / STATE_FILE}: holds no run definition and config") from None
    written_by, running = int(state.get("num_processes", 1)), launched_processes()
    if written_by != running:  # each process continues its own random streams: the same number of them
        raise CheckpointError(
            f"{path} was written by a run of {written_by} process(es) and this one has {running}: resume it "
            f"with {written_by} (accelerate launch --num_processes {written_by} ...); to start a new run from its "
            f"weights, load {path / 'model'} as a model"
        )
    if "run_dir" not in overrides:  # where the checkpoint is now, never where a copied or moved run was
        where = run_dir.run_of_checkpoint(path, state["config"].get("run_dir"))
        if where is None and state["config"].get("run_dir"):
            warnings.warn(f"{path} lies outside its run directory {state['config']['run_dir']}: the loaded agent "
                          "writes no run directory (give run_dir= for one)", stacklevel=3)
        config_options["run_dir"] = None if where is None else str(where)
    config_options["overwrite"] = overrides.get("overwrite", False)  # said for this load, never inherited
    agent = cls.__new__(cls)
    agent.config = PPOConfig.from_options(config_options)
    # The launch decides each process's device before any weight is placed (every rank on GPU 0 otherwise).
    processes = Processes.for_run(agent.config.device)
    device = processes.device or resolve_device(agent.config.device)
    task = _task_for(path, run, env)
    with quiet_transformers_bars():  # "Loading weights" bars would bury the resume's one-line notes
        model = _load_policy_model(path, run, device)
        saved_reference = any(name.startswith("reference/") for name in manifest["files"])  # listed, never found
        if not agent.config.uses_reference or lora.is_peft_model(model):  # (a LoRA's: _setup's)
            reference = None
        elif saved_reference:
            reference = frozen_copy(checkpoint.load_part(
                path / "reference", lambda p: load_causal_lm(str(checkpoint.check_safetensors(p)), device=device,
                                                             dtype=torch.float32)))
        else:
            reference = frozen_copy(load_causal_lm(run.get("model_path") or run["model"], device=device,
                                                   dtype=torch.float32))
    agent._setup(task, model, reference, reference_is_env_model=not saved_reference, processes=processes)
    if agent.config.uses_value_head:  # a missing head is an error: a fresh one would silently restart the critic
        heads = checkpoint.load_part(path / VALUE_FILE, lambda p: checkpoint.read_safetensors(p, device)[0])
        missing = sorted(set(head_tensors(agent.policy)) - set(heads))
        unexpected = agent.policy.load_state_dict(heads, strict=False).unexpected_keys
        if missing or unexpected:
            raise CheckpointError(f"{path / VALUE_FILE}: does not fit this agent's critic (missing {missing}, "
                                  f"unexpected {unexpected})")
    _load_optimizer(agent, path, state, device)
    rng = checkpoint.load_part(path / RNG_FILE, lambda p: checkpoint.read_safetensors(p, "cpu")[0])
    checkpoint.load_part(path / STATE_FILE, lambda p: restore_state(agent, rng, state))
    agent._open_run(resumed_from=path)
    if agent.run_dir and path.parent == agent.run_dir / run_dir.CHECKPOINTS:
        agent.last_checkpoint = (path.resolve(), agent.num_iterations, state.get("optimizer", True))
    return agent


def _task_for(path: Path, run: dict[str, Any], env: Any) -> Any:
    """The run's task: rebuilt from the checkpoint, or the env's when it defines the same task."""
    from textenv.agents.ppo import task_of

    if env is None:
        return run_definition.rebuild_task(path, run)
    task = task_of(env)
    different = run_definition.differences(run, run_definition.describe_task(task))
    if different:
        raise CheckpointError(
            f"the env differs from the run in {path}: {'; '.join(different)}. PPO.load(path) without an env "
            f"continues the run as recorded; to train these weights on another task, start a new run "
            f"with PPO(env, model=load_causal_lm('{path / 'model'}'))"
        )
    return task


def _load_policy_model(path: Path, run: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The policy's LM from ``model/``: a plain model, or a LoRA adapter on its recorded base."""
    if not lora.is_adapter_dir(path / "model"):
        return checkpoint.load_part(path / "model", lambda p: load_causal_lm(
            str(checkpoint.check_safetensors(p)), device=device, dtype=torch.float32))
    base = run.get(run_definition.LORA_BASE) or run.get("model_path") or run["model"]
    try:  # the adapter only: on its base, which is the reference too
        base_model = load_causal_lm(base, device=device, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a moved directory, no network: one line naming it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: its LoRA base {base!r} ({run_definition.LORA_BASE} in {STATE_FILE}) cannot "
                              f"be loaded ({type(exc).__name__}: {first})") from exc
    return checkpoint.load_part(path / "model", lambda p: lora.load(base_model, checkpoint.check_safetensors(p)))


def _load_optimizer(agent: PPO, path: Path, state: dict[str, Any], device: torch.device) -> None:
    """Adam's state from the checkpoint (a weights-only one: a warning, fresh moments); the config's rates."""
    if state.get("optimizer", True):
        optimizer_state = checkpoint.load_part(path / OPTIMIZER_FILE, lambda p: checkpoint.optimizer_state(p, device))
        groups, expected = len(optimizer_state["param_groups"]), len(agent.optimizer.param_groups)
        if groups != expected:
            raise CheckpointError(
                f"{path / OPTIMIZER_FILE} holds {groups} parameter group(s) where this agent has {expected} "
                "(the policy's, and the critic's with a value head): the checkpoint was written for another "
                "advantage; load its weights as a model instead (model/ inside it)"
            )
        checkpoint.load_part(path / OPTIMIZER_FILE, lambda p: agent.optimizer.load_state_dict(optimizer_state))
    else:
        warnings.warn(f"{path} holds no {OPTIMIZER_FILE} (a weights-only checkpoint): Adam's moments start afresh",
                      stacklevel=4)
    for group, lr in zip(agent.optimizer.param_groups, agent.initial_learning_rates):  # the config's, overrides
        group["lr"], group["eps"] = lr, agent.config.adam_eps  # included (annealing rescales from these)


def restore_state(agent: PPO, rng: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Counters, statistics, random streams and history from a checkpoint's ``trainer_state.json`` and rng."""
    k = agent.processes.index  # this process's own streams
    prefix = f"process{k}." if k else ""
    set_rng_state(agent, {
        name[len(prefix):]: tensor for name, tensor in rng.items()
        if name.startswith(prefix) and (k or not name.startswith("process"))
    })
    agent.kl_ctl.load_state_dict(state["kl_controller"])
    agent.score_stats.mean = np.float64(state["score_stats"]["mean"])
    agent.score_stats.var = np.float64(state["score_stats"]["var"])
    agent.score_stats.count = state["score_stats"]["count"]
    agent.task.rewards.load_state_dict(state["reward_pipeline"])
    agent.prompt_rng.bit_generator.state = state["process_prompt_rngs"][k] if k else state["prompt_rng"]
    agent.num_iterations = int(state["num_iterations"])
    agent.num_episodes = int(state["num_episodes"])
    agent.history = list(state["history"])
    agent.metadata = dict(state.get("metadata") or {})


@contextlib.contextmanager
def quiet_transformers_bars() -> Iterator[None]:
    """Turn transformers' own progress bars off for a while, as they were before."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
