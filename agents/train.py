"""The main job: ``textenv train`` — evaluate, train with PPO, evaluate again, report.

Every :class:`~textenv.agents.PPOConfig` field is a flag, generated from the dataclass, and so are the
task options of :class:`TrainTask`; both take their defaults from the dataclasses. ``--config FILE``
gives any of them from a YAML or JSON file, and flags override the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from textenv.cli import add_dataclass_arguments, read_config_file
from textenv.envs.task import DEFAULT_PROMPTS
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.models import DEFAULT_MODEL
from textenv.plugin_manager import hookimpl

TRAIN_REWARD = "sentiment_dense + repetition"
"""The main job's reward: the default's sentiment paid out per token (its sum is the same score),
which the value head credits token by token."""

ALIASES = {"learning_rate": ("--lr",), "init_kl_coef": ("--kl-coef",), "cliprange": ("--clip",)}
"""Short flags kept from before the flags were generated (the docs use ``--lr``)."""

STATE_FILE = "trainer_state.json"
"""The file that marks a checkpoint directory (written last by ``PPO.save``)."""


class UsageError(Exception):
    """A wrong option or path given to ``textenv train``; printed as one line, exit status 2."""


@dataclass(frozen=True, kw_only=True)
class TrainTask:
    """What ``textenv train`` trains, for how long and where it writes; the agent's options are PPOConfig's."""

    model: str = DEFAULT_MODEL
    """Local path, hub id, or smollm2-135m (SmolLM2-135M-Instruct)."""
    prompts: str = DEFAULT_PROMPTS
    """Prompt set name, .txt or .jsonl file."""
    reward: str = TRAIN_REWARD
    """Reward spec, e.g. 'sentiment + 0.5*length'; the default pays the sentiment out per token."""
    max_new_tokens: int = 32
    """Length limit of each completion, in tokens."""
    iterations: int = 12
    """PPO iterations of batch_size episodes (with --resume: the run's total, those done included)."""
    eval_prompts: int = 8
    """Prompts scored before and after training (0: none)."""
    output_dir: str = "runs/textenv"
    """The run directory (PPOConfig's run_dir): TensorBoard events, samples.jsonl, checkpoints/, reward_curve.png."""
    resume: str | None = None
    """A checkpoint directory, or a run directory (its latest checkpoint), to continue; the run's options are the
    checkpoint's, with the ones given here over them."""

    def __post_init__(self) -> None:
        for name in ("model", "prompts", "reward", "output_dir"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.resume is not None and not isinstance(self.resume, str):
            raise ValueError(f"resume must be a path or None, got {self.resume!r}")
        for name, least in (("max_new_tokens", 1), ("iterations", 1), ("eval_prompts", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@hookimpl
def textenv_add_commands(subparsers):
    """Add ``textenv train``, its flags generated from :class:`TrainTask` and :class:`PPOConfig`."""
    from textenv.agents.ppo_config import PPOConfig

    p = subparsers.add_parser(
        "train",
        help="train a model with PPO in the env (the main job)",
        description="Evaluate, train with PPO, evaluate again. Every PPOConfig field is a flag, its default "
                    "PPOConfig's (the setting tuned on the main task); --config FILE gives any option from a YAML "
                    "or JSON file, and flags override it. Exit status: 0 done, 2 a wrong option or path, "
                    "130 interrupted (after a checkpoint), 1 anything else.",
        usage="textenv train [--model M] [--reward SPEC] [--config FILE] [options]  (--help lists them all)",
        allow_abbrev=False,  # a new field must not change what an abbreviation used to mean
    )
    task = add_dataclass_arguments(p, TrainTask, group="task")["task"]
    task.add_argument("--config", metavar="FILE",
                      help="a YAML or JSON file of these options (the names of the flags, with _ or -); flags "
                           "given here override it")
    # run_dir is the task's --output-dir: the CLI always writes a run directory.
    add_dataclass_arguments(p, PPOConfig, skip=("run_dir",), aliases=ALIASES)
    p.set_defaults(run=run_training)
    return [UsageError]


def train_settings(args: argparse.Namespace) -> tuple[TrainTask, dict[str, Any]]:
    """The task and the PPO options the user gave: the ``--config`` file's, then the flags' over them.

    Returns:
        The task, and the PPO options given (PPOConfig fills in the rest; with ``--resume``, the checkpoint's).

    Raises:
        UsageError: a task option is wrong (the PPO options are checked when their config is built).
        ConfigFileError: the file cannot be read or holds an unknown key.
    """
    from textenv.agents.ppo_config import PPOConfig

    task_names = {f.name for f in fields(TrainTask)}
    ppo_names = {f.name for f in fields(PPOConfig)} - {"run_dir"}
    given = {k: v for k, v in vars(args).items() if k in task_names | ppo_names}
    if getattr(args, "config", None):
        hints = {**typing.get_type_hints(TrainTask), **typing.get_type_hints(PPOConfig)}
        hints.pop("run_dir")
        given = {**read_config_file(args.config, hints), **given}
    try:
        task = TrainTask(**{k: v for k, v in given.items() if k in task_names})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return task, {k: v for k, v in given.items() if k in ppo_names}


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest one in its ``checkpoints/``."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if (path / STATE_FILE).exists():
        return path
    found = sorted(
        (p for p in (path / "checkpoints").glob("*") if (p / STATE_FILE).exists()),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise FileNotFoundError(f"no checkpoint in {path} (looked for {STATE_FILE} in it and in its checkpoints/)")
    return found[-1]


def run_training(args: argparse.Namespace) -> int:
    """Run ``textenv train`` with parsed command-line arguments.

    Returns:
        The exit status: 0 done, 2 training stopped on an error, 130 interrupted (after a checkpoint).

    Raises:
        UsageError: a wrong option or ``--resume`` path, before anything is loaded.
    """
    from textenv.agents import PPO, PPOConfig, TrainingError

    task, options = train_settings(args)
    options["run_dir"] = task.output_dir
    checkpoint = None
    if task.resume:
        try:
            checkpoint = latest_checkpoint(task.resume)
        except FileNotFoundError as exc:
            raise UsageError(f"--resume: {exc}") from None
        options.setdefault("device", PPOConfig.device)  # the machine's, not the one the checkpoint was written on
        _checked_config(PPOConfig, {**json.loads((checkpoint / STATE_FILE).read_text())["config"], **options})
    else:
        _checked_config(PPOConfig, options)

    start = time.perf_counter()
    env = TextGenVectorEnv(
        1, model=task.model, prompts=task.prompts, reward=task.reward, max_new_tokens=task.max_new_tokens
    )
    if checkpoint is not None:
        print(f"resuming from {checkpoint}", flush=True)
        agent = PPO.load(checkpoint, env, **options)
    else:
        print(f"loading {task.model} ...", flush=True)
        agent = PPO(env, **options)
    print(f"ready in {time.perf_counter() - start:.1f} s on {agent.device}"
          f"{' (bf16 autocast)' if agent.bf16 else ''}; reward = {task.reward}", flush=True)

    prompts = [env.task.prompts[i % len(env.task.prompts)] for i in range(task.eval_prompts)]
    before = agent.evaluate(prompts, seed=agent.config.seed) if prompts else None
    total = task.iterations * agent.config.batch_size
    try:
        agent.learn(total, reset_num_episodes=checkpoint is None)
    except TrainingError as error:  # its message says what went wrong and where the last good state is
        print(f"textenv: error: {error}", file=sys.stderr)
        return 2
    if agent.num_episodes < total:  # a Ctrl-C: learn() saved a checkpoint and said where
        return 130
    after = agent.evaluate(prompts, seed=agent.config.seed) if prompts else None

    if before is not None:
        print("\nsamples (same prompts, same sampling seed):")
        for i in range(min(4, len(prompts))):
            print(f"  {prompts[i]}")
            print(f"    before [{before.rewards[i]:+.2f}] {before.completions[i].strip()[:120]!r}")
            print(f"    after  [{after.rewards[i]:+.2f}] {after.completions[i].strip()[:120]!r}")
        print(f"\nmean reward on {len(prompts)} prompts: before {np.mean(before.rewards):+.3f}, "
              f"after {np.mean(after.rewards):+.3f}")
    curve = [h["charts/episodic_return"] for h in agent.history]
    if curve:
        print(f"training reward by iteration: {' '.join(f'{r:+.2f}' for r in curve)}")
    print(f"run directory: {task.output_dir} (TensorBoard events, samples.jsonl, reward_curve.png, checkpoints/)")
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 0


def _checked_config(config_class: type, options: dict[str, Any]) -> Any:
    """The config, or its one-line complaint as a UsageError (checked before the model is loaded)."""
    try:
        return config_class.from_options(options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
