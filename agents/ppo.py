"""Token-level PPO for causal language models in a textenv environment.

One iteration: sample ``batch_size`` episodes in the batched env (the policy keeps
its KV cache) → the policy's log-probs and values and the reference's log-probs from
batched full forwards, as the update computes them → per-token KL penalty, the episode
score at the last token, per-token rewards from sources → GAE (or a critic-free
group baseline) → ``ppo_epochs`` passes of clipped PPO over mini-batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.running_mean_std import RunningMeanStd
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from textenv.agents import checkpoint, lora, run_definition
from textenv.agents.checkpoint import STATE_FILE, CheckpointError
from textenv.agents.policy import ActorCritic, frozen_copy
from textenv.agents.ppo_config import PPOConfig
from textenv.agents.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    full_kl,
    group_advantages,
    kl_penalty,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)
from textenv.agents.processes import Processes
from textenv.agents.run_log import RunLog, plot_reward_curve
from textenv.devices import (
    autocast,
    keep_freed_cpu_memory,
    launched_processes,
    resolve_device,
    store_linear_weights_in_bf16,
    use_bf16,
)
from textenv.envs.task import TextTask
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.generation import Episodes, SamplingConfig, generate_episodes
from textenv.models import load_causal_lm
from textenv.rewards import RewardError, RewardInterrupted

VALUE_FILE = "value.safetensors"
"""The value head (and a separate value model), beside the policy's ``model/``."""
OPTIMIZER_FILE = "optimizer.safetensors"
"""Adam's moments and steps as tensors; its parameter groups as JSON in the safetensors metadata."""
RNG_FILE = "rng.safetensors"
"""torch's global RNG state and the sampling and shuffling generators' (and CUDA's)."""

HISTORY_LIMIT = 2000
"""Iterations whose statistics :attr:`PPO.history` holds at most: past it, its older half is thinned to every
second iteration, so memory and checkpoints stay bounded on long runs (TensorBoard keeps every iteration)."""

IterationCallback = Callable[["PPO", dict[str, float]], "bool | None"]
"""``callback(agent, stats)`` after each iteration of :meth:`PPO.learn`; ``False`` stops training."""


class TrainingError(RuntimeError):
    """Training stopped on a non-finite loss or gradient, or a reward source's error (a NaN reward, say); the
    message says where the last good checkpoint is."""


@dataclasses.dataclass
class Batch:
    """One iteration's rollout, ready for the PPO epochs (all tensors on the agent's device).

    Attributes:
        input_ids: (B, L) prompt then completion (without the columns that are padding in every row).
        attention_mask: (B, L).
        tokens: (B, T) the completion tokens.
        mask: (B, T) 1.0 for the episode's tokens.
        logprobs: (B, T) the rollout policy's log-probs of the tokens (from a full forward, as the update's).
        values: (B, T) its values (zeros without a value head).
        advantages: (B, T).
        returns: (B, T) the value targets.
        ref_logprobs: (B, T) the reference's log-probs of the tokens (the rollout's without a reference).
        ref_logp_full: (B, T, V) fp32, the reference's whole log-distribution at each position (only for
            ``kl_estimator="full"``, else None).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    ref_logprobs: torch.Tensor
    ref_logp_full: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> Batch:
        """The sub-batch of the given rows."""
        return Batch(**{
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
        })


class PPO:
    """Token-level PPO with a value head, a KL penalty to a frozen reference, and SB3's API.

    Example::

        env = gym.make("textenv/TextGen-v0", reward="sentiment")
        agent = PPO(env, batch_size=16, run_dir="runs/demo")
        agent.learn(total_episodes=320)
        agent.save("runs/demo/final")
        print(agent.generate(["This movie was"]))
    """

    def __init__(self, env: Any, model: torch.nn.Module | None = None, **options: Any):
        """Create the agent.

        Args:
            env: a textenv env (``gym.make("textenv/TextGen-v0", ...)``, a vector env, or
                a wrapper of either); the agent samples its own batched copy of the task.
            model: the causal LM to train; by default the env's ``model`` is loaded.
            **options: :class:`PPOConfig` fields.
        """
        self.config = PPOConfig.from_options(options)
        self._setup(env, model, reference=None, reference_is_env_model=model is None)

    def _setup(
        self, env: Any, model: torch.nn.Module | None, reference: torch.nn.Module | None, reference_is_env_model: bool
    ) -> None:
        """Build everything but the run's state. ``reference_is_env_model``: the reference is the env's
        ``model`` as loaded, so checkpoints need not hold a copy of it."""
        cfg = self.config
        self.task = _task_of(env)
        self.processes = Processes.for_run(cfg.device)
        self.device = self.processes.device or resolve_device(cfg.device)
        self.bf16 = use_bf16(self.device, self.processes.precision(cfg.precision))
        self._share_batch()
        if self.device.type == "cpu" and cfg.keep_cpu_memory:
            keep_freed_cpu_memory()
        self.env = TextGenVectorEnv(self.local_batch_size, task=self.task, device=self.device,
                                    autoreset_mode="Disabled")
        if model is None:
            if self.task.model_name is None:
                raise ValueError("the env was built from a tokenizer only: give PPO a model=")
            model = load_causal_lm(self.task.model_name, device=self.device, dtype=torch.float32)
        model = model.to(self.device).float()
        self._prefer_eager_attention(model)
        self.reference_is_env_model = reference_is_env_model
        if cfg.lora_rank and not lora.is_peft_model(model):
            model = lora.wrap(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                              targets=cfg.lora_target_modules, base=self._base_source(model))
        self.lora = lora.is_peft_model(model)  # PPO(env, model=get_peft_model(...)) too
        if self.lora and not lora.base_source(model):
            raise ValueError("the LoRA model's base records no name_or_path, so no checkpoint could rebuild it: "
                             "load the base with from_pretrained(path), or give lora_rank= and no model")
        if self.lora and self.bf16:  # the frozen base only runs under bf16 autocast, as a reference does
            lora.store_base_in_bf16(model)
        if not cfg.uses_reference:
            self.reference = None
        elif self.lora:  # one copy of the base weights: the reference is the policy with its adapter disabled
            self.reference = lora.AdapterDisabled(model)
        else:
            self.reference = reference.to(self.device) if reference is not None else frozen_copy(model)
            self._prefer_eager_attention(self.reference)
            if self.bf16:  # it only runs under bf16 autocast: same logits, no per-forward casts, less memory
                store_linear_weights_in_bf16(self.reference)
        self.policy = ActorCritic(
            model, with_value_head=cfg.uses_value_head, separate_value_model=cfg.value_model == "separate"
        ).to(self.device)
        self.policy.lm.config.use_cache = True
        self.trained = self.processes.prepare(self.policy)  # the update's forwards: gradients averaged (DDP)
        self.optimizer = torch.optim.Adam(
            self._param_groups(), lr=cfg.learning_rate, eps=cfg.adam_eps,
            fused=True,  # one kernel for all parameters: 5x faster steps than the for-each default on a CPU
        )
        self.initial_learning_rates = [group["lr"] for group in self.optimizer.param_groups]  # lr_decay's start
        self.kl_ctl = (
            AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
            if cfg.adaptive_kl
            else FixedKLController(cfg.init_kl_coef)
        )
        self.score_stats = RunningMeanStd()
        self.sampling = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        # Each process samples its own episodes: its own prompt and token streams (process 0's are a
        # one-process run's, so a run's seed means the same with any number of processes).
        stream = cfg.seed if self.processes.is_main else _stream_seed(cfg.seed, self.processes.index)
        self.prompt_rng = np.random.default_rng(stream)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(stream)
        self.shuffle_generator = torch.Generator().manual_seed(stream + 1)
        self.num_iterations = 0
        self.num_episodes = 0
        self.history: list[dict[str, float]] = []
        self.metadata: dict[str, Any] = {}  # JSON-able notes kept in checkpoints (textenv train keeps its own options)
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else None  # every process knows it; only the main writes
        self.run = RunLog(cfg.run_dir) if cfg.run_dir and self.processes.is_main else None
        self._saved: tuple[Path, int, bool] | None = None  # the last checkpoint: its path, iteration, optimizer
        self._schedule_end: int | None = None  # the run's episode count where the current learn() call ends
        self._bar: tqdm | None = None

    def _share_batch(self) -> None:
        """Each process's share of the batch: ``batch_size / N`` episodes, mini-batches of ``mini_batch_size / N``
        (an optimizer step still sees ``mini_batch_size`` episodes in all), micro-batches of that over the
        gradient accumulation steps (the config's, or accelerate's ``--gradient_accumulation_steps``)."""
        cfg, n = self.config, self.processes.num
        steps, launched_steps = cfg.gradient_accumulation_steps, self.processes.gradient_accumulation_steps
        if launched_steps > 1:
            if steps not in (1, launched_steps):
                raise ValueError(f"gradient_accumulation_steps {steps} differs from accelerate's "
                                 f"--gradient_accumulation_steps {launched_steps}: give one of them")
            steps = launched_steps
        if cfg.mini_batch_size % (n * steps):
            raise ValueError(f"mini_batch_size {cfg.mini_batch_size} must be a multiple of {n} process(es) x "
                             f"{steps} gradient accumulation step(s): each process's micro-batches must be whole")
        self.local_batch_size = cfg.batch_size // n  # (batch_size is a multiple of mini_batch_size)
        self.local_mini_batch_size = cfg.mini_batch_size // n
        self.micro_batch_size = self.local_mini_batch_size // steps
        if cfg.advantage != "gae" and self.local_batch_size % cfg.group_size:
            raise ValueError(f"group_size {cfg.group_size} must divide each process's {self.local_batch_size} "
                             f"episodes (batch_size {cfg.batch_size} over {n} processes): a group is sampled whole")

    def _base_source(self, model: torch.nn.Module) -> str | None:
        """Where a LoRA policy's base weights come from: the env's model (a hub id, or a directory as an absolute
        path), else the model's own ``name_or_path`` (None when it has none, e.g. built from a config)."""
        if self.reference_is_env_model:
            run = run_definition.describe_task(self.task)
            return run["model_path"] or run["model"]
        return getattr(model, "name_or_path", None) or None

    def _prefer_eager_attention(self, model: torch.nn.Module) -> None:
        if self.device.type == "cpu" and hasattr(model, "set_attn_implementation"):
            # Short sequences with padding: eager attention beats SDPA on the CPU (~20 % per
            # forward+backward of SmolLM2 at 8x44 tokens, benchmarks/ppo_throughput.py).
            model.set_attn_implementation("eager")

    def _param_groups(self) -> list[dict[str, Any]]:
        """The policy's trainable parameters; the critic's in a group of its own with ``value_learning_rate``."""
        critic = [
            p for m in (self.policy.value_head, self.policy.value_model) if m is not None
            for p in m.parameters() if p.requires_grad
        ]
        critic_ids = {id(p) for p in critic}
        policy = [p for p in self.policy.parameters() if p.requires_grad and id(p) not in critic_ids]
        groups = [{"params": policy, "lr": self.config.learning_rate}]
        if critic:
            lr = self.config.value_learning_rate
            groups.append({"params": critic, "lr": self.config.learning_rate if lr is None else lr})
        return groups

    def _anneal_learning_rates(self) -> None:
        """Set each group's learning rate for this iteration: linearly towards 0 at ``lr_decay_episodes``,
        or with ``lr_schedule="linear"`` at the end of the current :meth:`learn` call; else constant."""
        end = self.config.lr_decay_episodes
        if end is None and self.config.lr_schedule == "linear":
            end = self._schedule_end
        scale = 1.0 if end is None else max(0.0, 1.0 - self.num_episodes / end)
        for group, initial in zip(self.optimizer.param_groups, self.initial_learning_rates):
            group["lr"] = initial * scale

    def _show_phase(self, phase: str) -> None:
        """Show what the iteration is doing in :meth:`learn`'s bar (an iteration takes minutes on a CPU)."""
        if self._bar is not None:
            self._bar.set_postfix_str(phase, refresh=True)

    # ------------------------------------------------------------------ training

    def learn(
        self,
        total_episodes: int,
        *,
        callback: IterationCallback | Sequence[IterationCallback] | None = None,
        reset_num_episodes: bool = True,
    ) -> PPO:
        """Train for ``total_episodes`` more episodes (or, with ``reset_num_episodes=False``,
        until the run has seen ``total_episodes`` in all, as when resuming).

        A first Ctrl-C finishes the current iteration, saves a checkpoint and returns;
        a second one aborts at once.

        Args:
            total_episodes: episodes to train for (rounded up to whole iterations).
            callback: called as ``callback(agent, stats)`` after each iteration, with that
                iteration's logged scalars (one callable or a list of them). Returning
                ``False`` stops training there, as SB3's callbacks do; the run then ends
                as it would at ``total_episodes``, with a checkpoint and the reward curve.
            reset_num_episodes: count ``total_episodes`` from now (True) or from the run's
                start (False).

        Raises:
            TrainingError: a non-finite loss or gradient, or a reward source's error such
                as a NaN reward (a checkpoint of the last good weights is written first when
                there is a run directory).
        """
        callbacks = _callbacks(callback)
        target = self.num_episodes + total_episodes if reset_num_episodes else total_episodes
        iterations = max(0, math.ceil((target - self.num_episodes) / self.config.batch_size))
        self._schedule_end = target
        show = self.config.progress and self.processes.is_main
        # With a person at the terminal (the human source) a bar would print into their screen: a line per
        # iteration, between batches, instead.
        lines = show and self.task.rewards.interactive
        bar = tqdm(total=iterations, desc="PPO", unit="it", disable=not show or lines)
        self._bar = None if bar.disable else bar
        try:
            # the bar closes before any error is printed
            with bar, _graceful_interrupt(say=self.processes.is_main) as interrupt:
                for done in range(1, iterations + 1):
                    stats = self.train_iteration()
                    bar.update(1)
                    summary = f"reward={stats['charts/episodic_return']:+.3f}, kl={stats['objective/kl']:.2f}"
                    bar.set_postfix_str(summary)
                    if lines:
                        print(f"PPO iteration {done}/{iterations}: {summary}", flush=True)
                    every = self.config.checkpoint_every
                    if self.run_dir and every and self.num_iterations % every == 0:
                        self._show_phase("saving a checkpoint")
                        self.save_checkpoint(optimizer=self.config.save_optimizer)
                    answers = [cb(self, stats) for cb in callbacks]  # every callback sees every iteration
                    # (every process takes the same branch: one that stopped alone would leave the others waiting)
                    if self.processes.any(any(answer is False for answer in answers)):
                        break
                    if self.processes.any(interrupt.requested):
                        bar.close()
                        where = self._save_unless_saved() if self.run_dir else None
                        if self.processes.is_main:
                            print(f"interrupted after iteration {self.num_iterations}"
                                  + (f"; checkpoint in {where} (resume with PPO.load)" if where else ""), flush=True)
                        return self
        finally:
            self._bar = None
            self._schedule_end = None  # train_iteration() outside learn() keeps the rates where they are
        if self.run_dir:
            self._save_unless_saved()
        if self.run and self.history:
            plot_reward_curve(self.history, self.run.dir / "reward_curve.png")
        return self

    def train_iteration(self) -> dict[str, float]:
        """Sample one batch and run the PPO epochs on it; returns the logged scalars."""
        cfg = self.config
        start = time.perf_counter()
        draws = self._rollout_draws()
        self._show_phase("rollout")
        try:
            episodes = self.rollout()
        except RewardError as error:  # e.g. a plugin's NaN: the weights are still the last iteration's
            self._restore_rollout_draws(draws)  # so that resuming samples this batch again
            self._stop(str(error), saved="the state after the last good iteration is saved in", cause=error)
        except RewardInterrupted:  # Ctrl-C in a reward call (one that hangs, say): save the last good state, stop
            self._restore_rollout_draws(draws)
            if self.run_dir:
                where = self._save_unless_saved()
                if self.processes.is_main:
                    print(f"\ncheckpoint of iteration {self.num_iterations} in {where}", flush=True)
            raise
        rollout_time = time.perf_counter() - start
        self._show_phase("log-probs")
        batch, reward_stats = self.make_batch(episodes)
        prepare_time = time.perf_counter() - start - rollout_time
        self._anneal_learning_rates()
        update_stats = self.update(batch)
        update_time = time.perf_counter() - start - rollout_time - prepare_time
        self.num_iterations += 1
        self.num_episodes += cfg.batch_size
        terms = list(episodes.reward_terms.items())  # (every process has the same terms, in the same order)
        tokens, returns, *term_sums = self.processes.sum(torch.tensor(  # over every process's episodes
            [float(batch.mask.sum()), float(episodes.rewards.sum()), *(float(v.sum()) for _, v in terms)],
            dtype=torch.float64, device=self.device,
        )).tolist()
        stats = {
            "episodes": float(self.num_episodes),
            "charts/episodic_return": returns / cfg.batch_size,
            "charts/episodic_length": tokens / cfg.batch_size,
            **reward_stats,
            **update_stats,
            "charts/learning_rate": self.optimizer.param_groups[0]["lr"],
            "perf/tokens_per_s": tokens / (time.perf_counter() - start),
            "perf/time_rollout": rollout_time,
            "perf/time_prepare": prepare_time,
            "perf/time_update": update_time,
        }
        for (name, _), total in zip(terms, term_sums):
            stats[f"reward/{name}"] = total / cfg.batch_size
        self.history.append(stats)
        if len(self.history) > HISTORY_LIMIT:
            half = len(self.history) // 2  # the older half, every second iteration: the curve still spans the run
            self.history = self.history[:half:2] + self.history[half:]
        if self.run:
            self.run.scalars(stats, self.num_episodes)
            if cfg.sample_every and (self.num_iterations - 1) % cfg.sample_every == 0:  # 1st, then every k
                self._log_samples(episodes)
        return stats

    def rollout(self) -> Episodes:
        """Sample one episode per row with the current policy (no gradients): this process's share of the batch.

        Normalized reward terms are normalized with statistics of the whole batch, every process's episodes
        (:meth:`textenv.rewards.RewardPipeline.one_batch`). A reward source's error on any process stops every
        process here, so that none waits for another that has left.
        """
        self.policy.eval()
        failure: BaseException | None = None
        with self.task.rewards.one_batch(gather=self.processes.concatenate):
            try:
                with torch.no_grad(), autocast(self.device, self.bf16):
                    episodes = generate_episodes(
                        self.policy.lm, self.env, sampling=self.sampling, generator=self.sample_generator,
                        prompts=self._draw_prompts(self.local_batch_size), progress=self._bar is not None,
                    )
            except (RewardError, RewardInterrupted) as error:
                failure = error
            if self.processes.any(failure is not None):  # raised inside: the batch leaves no statistics behind
                raise failure or RewardError("a reward source failed in another process (its message names it)")
        return episodes

    def _rollout_draws(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, dict[str, Any]]]:
        """What a rollout advances: the RNG states and the reward terms' normalization statistics."""
        return self._torch_rng_state(), self.prompt_rng.bit_generator.state, self.task.rewards.state_dict()

    def _restore_rollout_draws(
        self, draws: tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, dict[str, Any]]]
    ) -> None:
        rng, prompt_rng, reward_stats = draws
        self._set_torch_rng_state(rng)
        self.prompt_rng.bit_generator.state = prompt_rng
        self.task.rewards.load_state_dict(reward_stats)

    def _draw_prompts(self, n: int) -> list[str]:
        cfg = self.config
        group = cfg.group_size if cfg.advantage != "gae" else 1
        picks = self.prompt_rng.integers(len(self.task.prompts), size=n // group)
        return [self.task.prompts[k] for k in picks for _ in range(group)]

    @torch.no_grad()
    def make_batch(self, episodes: Episodes) -> tuple[Batch, dict[str, float]]:
        """The rollout policy's and the reference's log-probs, KL-penalized per-token rewards and advantages.

        The "old" log-probs and values are recomputed here with one batched forward, the same
        kind of forward at the same precision as the update's and the reference's: the
        rollout's one-token-at-a-time cached decoding rounds differently under bf16 (the PPO
        ratio of an unchanged SmolLM2 reached 1.16, and its KL to an identical reference came
        out non-zero), so clipping and the KL penalty would act on rounding noise.
        """
        cfg = self.config
        tokens = episodes.completion_ids  # (B, T)
        mask = episodes.completion_mask.float()  # (B, T)
        # Every forward of this batch, here and in the update, runs micro-batches of the same width: under
        # bf16 a row's logits change with the width of its micro-batch (0.16 nats on SmolLM2 at 39 vs 44
        # columns), so padding is dropped once for the whole batch, not per micro-batch.
        input_ids, attention = without_left_padding(
            torch.cat([episodes.prompt_ids, tokens], dim=1),  # (B, L)
            torch.cat([episodes.prompt_mask, episodes.completion_mask], dim=1),  # (B, L)
        )  # (B, L') each
        t = tokens.shape[1]
        logprobs = torch.zeros_like(mask)  # (B, T)
        values = torch.zeros_like(mask)  # (B, T); stays 0 without a value head
        ref_logprobs = logprobs  # (B, T); the policy's own (KL 0) without a reference
        keep_full = cfg.kl_estimator_used == "full" and self.reference is not None  # (the config ties it to the loss)
        ref_logp_full = (  # (B, T, V) fp32: in bf16 an identical reference's KL came out at +-1e-3
            torch.empty(*tokens.shape, self.task.vocab_size, device=self.device) if keep_full else None
        )
        if self.reference is not None:
            ref_logprobs = torch.zeros_like(mask)
        self.policy.eval()
        policy_time = 0.0  # what the recomputation costs (on a GPU, without a sync: only roughly)
        for rows in torch.arange(len(tokens), device=self.device).split(self.micro_batch_size):
            ids, att = input_ids[rows], attention[rows]  # (b, L') each
            start = time.perf_counter()
            with autocast(self.device, self.bf16):
                logits, row_values = self.policy(ids, att, t, values=cfg.uses_value_head)  # (b, T, V), (b, T)
            logprobs[rows] = self._token_logprobs(logits, tokens[rows]) * mask[rows]
            if row_values is not None:
                values[rows] = row_values * mask[rows]
            policy_time += time.perf_counter() - start
            if self.reference is None:
                continue
            with autocast(self.device, self.bf16):
                ref_logits = self.reference(
                    input_ids=ids, attention_mask=att, position_ids=(att.cumsum(-1) - 1).clamp(min=0),
                    logits_to_keep=t + 1, use_cache=False,
                ).logits[:, :-1]  # (b, T, V)
            ref_logprobs[rows] = self._token_logprobs(ref_logits, tokens[rows]) * mask[rows]
            if ref_logp_full is not None:
                ref_logp_full[rows] = F.log_softmax(self._scaled(ref_logits), dim=-1, dtype=torch.float32)

        scores = torch.as_tensor(episodes.scores, dtype=torch.float32, device=self.device)  # (B,)
        if cfg.reward_norm:  # the statistics of the whole batch, every process's episodes
            self.score_stats.update(self.processes.concatenate(np.asarray(episodes.scores)))
            scores = (scores - float(self.score_stats.mean)) / math.sqrt(float(self.score_stats.var) + 1e-8)
        if cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        rewards = episodes.token_rewards * mask  # (B, T)
        if not cfg.kl_in_loss:  # else the update's loss carries it
            kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator_used) * mask  # (B, T)
            rewards = rewards - self.kl_ctl.value * kl  # (B, T)
        last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of each episode's last token
        rewards[torch.arange(len(rewards), device=self.device), last] += scores

        if cfg.uses_value_head:
            advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)  # (B, T) each
            if cfg.whiten_advantages:  # over every process's tokens
                advantages = masked_whiten(advantages, mask, total=self.processes.sum)
        else:
            sequence_advantage = group_advantages(rewards.sum(1), cfg.group_size, cfg.advantage)  # (B,)
            if cfg.whiten_advantages:
                # Over sequences and without a shift: a group's advantages already sum to 0, and whitening
                # over tokens would weigh long completions more and move an all-equal group off its 0.
                spread = self.processes.gather(sequence_advantage).std()  # () over every process's episodes
                sequence_advantage = sequence_advantage / (spread + 1e-8)  # (B,)
            advantages, returns = sequence_advantage[:, None] * mask, torch.zeros_like(mask)  # (B, T)
        kl_sum, score_sum, logprob_sum, n_tokens = self.processes.sum(torch.stack([  # over every process's rows
            ((logprobs - ref_logprobs) * mask).sum(), scores.sum(), (logprobs * mask).sum(), mask.sum()
        ])).tolist()
        episode_kl = kl_sum / cfg.batch_size  # k1 per episode, whatever penalizes
        stats = {
            "objective/kl": episode_kl,
            "objective/kl_coef": float(self.kl_ctl.value),
            "objective/scores": score_sum / cfg.batch_size,
            "objective/logprobs": logprob_sum / max(n_tokens, 1.0),
            "perf/time_policy_forward": policy_time,
        }
        self.kl_ctl.update(episode_kl, cfg.batch_size)
        batch = Batch(input_ids, attention, tokens, mask, logprobs, values, advantages, returns,
                      ref_logprobs, ref_logp_full)
        return batch, stats

    def update(self, batch: Batch) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped PPO over shuffled mini-batches of ``batch``.

        Each mini-batch's statistics are token-weighted means over its micro-batches (its ratio's
        maximum, the maximum), so the ratio guard and the target-KL stop see the mini-batch's own
        figures however its tokens fall into micro-batches. As in SB3, the target-KL stop is checked
        before each step: once a mini-batch has moved more than ``1.5 * target_kl`` from the rollout
        policy, the iteration ends without that step.
        """
        cfg = self.config
        # Dropout stays off, as in the rollout: before the first step the ratio must be exactly 1.
        self.policy.eval()
        if self.lora and cfg.lora_dropout:  # asked for: on in the update's forwards only (eval() turns it off)
            lora.set_adapter_dropout(self.policy.lm, True)
        logged: list[tuple[dict[str, float], float]] = []  # each stepped mini-batch's statistics, its tokens
        skipped = steps = 0
        stop = False
        for epoch in range(cfg.ppo_epochs):
            self._show_phase(f"update {epoch + 1}/{cfg.ppo_epochs}")
            order = torch.randperm(len(batch.tokens), generator=self.shuffle_generator).to(self.device)
            for mini in order.split(self.local_mini_batch_size):  # this process's part of each mini-batch
                self.optimizer.zero_grad(set_to_none=True)
                micros = mini.split(self.micro_batch_size)
                # each micro-batch's token mean weighs by its share of the whole mini-batch's tokens (all processes')
                tokens = self.processes.sum(batch.mask[mini].sum())
                shares = [batch.mask[micro].sum() / tokens for micro in micros]
                micro_stats = [
                    self._backward(batch.rows(micro), share, with_entropy=epoch == 0, sync=k == len(micros) - 1)
                    for k, (micro, share) in enumerate(zip(micros, shares))
                ]
                stats = self.processes.reduce_stats(_weighted_sum(micro_stats, [float(share) for share in shares]))
                if cfg.target_kl is not None and stats["approx_kl"] > 1.5 * cfg.target_kl:
                    stop = True  # the policy moved far enough from the rollout's
                    break
                if stats["ratio_mean"] > cfg.ratio_threshold:
                    skipped += 1  # a policy this far from the rollout's: skip rather than step
                    continue
                stats["grad_norm"] = self._step()
                steps += 1
                logged.append((stats, float(tokens)))
            if stop:
                break
        stats = {f"losses/{k}": v for k, v in _weighted_mean(*zip(*logged)).items()} if logged else {}
        stats["losses/skipped_minibatches"] = float(skipped)
        stats["losses/optimizer_steps"] = float(steps)
        stats["losses/epochs"] = float(epoch + 1)
        stats["losses/early_stopped"] = float(stop)
        return stats

    def _backward(
        self, mb: Batch, weight: torch.Tensor | float = 1.0, with_entropy: bool = True, sync: bool = True
    ) -> dict[str, float]:
        """Forward and backward one micro-batch; returns its detached statistics.

        The loss is a mean over the micro-batch's tokens; ``weight`` (its share of the
        mini-batch's tokens, over all processes) makes the accumulated gradient that of the whole
        mini-batch's token mean, however the episodes' lengths fall into micro-batches and processes.
        With several processes the gradients are averaged when ``sync`` (the mini-batch's last
        micro-batch); before that they only accumulate.

        Without an entropy bonus (``ent_coef`` 0) the entropy is only logged: the first
        epoch's, of the rollout policy, is enough, and skipping it later saves a pass over (b, T, V).
        """
        with self.processes.no_sync(self.trained, skip=not sync):
            stats, loss = self._loss(mb, with_entropy)
            # DDP averages over processes: times their number, the sum of every process's token-weighted share
            (loss * weight * self.processes.num).backward()
        return stats

    def _loss(self, mb: Batch, with_entropy: bool) -> tuple[dict[str, float], torch.Tensor]:
        """One micro-batch's loss (its token mean) and its statistics."""
        cfg = self.config
        with autocast(self.device, self.bf16):
            logits, values = self.trained(mb.input_ids, mb.attention_mask, mb.tokens.shape[1],
                                          values=cfg.uses_value_head)
        logits = self._scaled(logits)  # (b, T, V)
        bonus = cfg.ent_coef != 0
        logprobs, entropy = logprobs_and_entropy(  # (b, T) each
            logits, mb.tokens, with_entropy or bonus, entropy_grad=bonus
        )
        pg_loss, pg_stats = policy_loss(logprobs, mb.logprobs, mb.advantages, mb.mask, cfg.cliprange)
        loss = pg_loss
        stats = {"policy_loss": pg_loss.item(), **{k: v.item() for k, v in pg_stats.items()}}
        if cfg.kl_in_loss and self.reference is not None:
            if mb.ref_logp_full is not None:
                per_token = full_kl(logits, mb.ref_logp_full)  # (b, T)
            else:
                # past the end, the policy's log-prob against a stored 0 could overflow k3 (a NaN gradient)
                inside = torch.where(mb.mask.bool(), logprobs, mb.ref_logprobs)  # (b, T)
                per_token = kl_penalty(inside, mb.ref_logprobs, cfg.kl_estimator_used)  # (b, T)
            kl = masked_mean(per_token, mb.mask)  # ()
            loss = loss + self.kl_ctl.value * kl
            stats["kl_loss"] = kl.item()
        if values is not None:
            v_loss, v_stats = value_loss(values.float(), mb.values, mb.returns, mb.mask, cfg.cliprange_value)
            loss = loss + cfg.vf_coef * v_loss
            stats.update(value_loss=v_loss.item(), **{k: v.item() for k, v in v_stats.items()})
        if entropy is not None:
            mean_entropy = masked_mean(entropy, mb.mask)  # ()
            if bonus:
                loss = loss - cfg.ent_coef * mean_entropy
            if with_entropy:  # the rollout policy's, as without a bonus
                stats["entropy"] = mean_entropy.item()
        if not torch.isfinite(loss) and self.processes.num == 1:
            # (with several, the NaN reaches every process's averaged gradient, and the gradient check stops all)
            self._stop_on_nonfinite(f"the loss is {loss.item()} (policy loss {stats['policy_loss']})")
        return stats, loss

    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        """(b, T, V') model logits → (b, T, V) logits of the sampling distribution (the task's vocabulary,
        divided by the temperature)."""
        logits = logits[..., : self.task.vocab_size]  # (b, T, V)
        if self.config.temperature != 1.0:
            logits = logits.float() / self.config.temperature
        return logits

    def _token_logprobs(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(b, T) log-probs of ``tokens`` under model logits (b, T, V'), computed as the update computes them."""
        return logprobs_and_entropy(self._scaled(logits), tokens, with_entropy=False)[0]

    def _step(self) -> float:
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._stop_on_nonfinite(f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        return grad_norm

    def _stop_on_nonfinite(self, what: str) -> None:
        self._stop(what, saved="the weights before this step are saved in")

    def _stop(self, what: str, *, saved: str, cause: Exception | None = None) -> None:
        """Raise TrainingError, first saving a ``last-good`` checkpoint when there is a run directory."""
        self.optimizer.zero_grad(set_to_none=True)
        where = ""
        if self.run_dir:
            path = self.save_checkpoint(self.run_dir / "checkpoints" / "last-good")
            where = f"; {saved} {path}"
        raise TrainingError(f"training stopped at iteration {self.num_iterations + 1}: {what}{where}") from cause

    # ------------------------------------------------------------ using the policy

    def evaluate(
        self, prompts: str | list[str], *, temperature: float | None = None, top_k: int = 0, top_p: float = 1.0,
        seed: int = 0,
    ) -> Episodes:
        """Sample one completion per prompt with the current policy and score it with the env's rewards.

        Args:
            prompts: the prompts (one string is one prompt).
            temperature: sampling temperature (0: greedy); the training one by default.
            top_k: sample among the k most likely tokens only (0: all).
            top_p: nucleus sampling mass (1.0: all).
            seed: seeds the sampling, so two evaluations compare like with like.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        env = TextGenVectorEnv(len(prompts), task=self.task, device=self.device, autoreset_mode="Disabled")
        sampling = SamplingConfig(  # top-k/top-p only here: training samples the distribution its log-probs use
            temperature=self.sampling.temperature if temperature is None else temperature, top_k=top_k, top_p=top_p
        )
        self.policy.eval()
        reward_stats = self.task.rewards.state_dict()  # normalized terms must not learn from an evaluation
        try:
            with torch.no_grad(), autocast(self.device, self.bf16):
                return generate_episodes(self.policy.lm, env, sampling=sampling, seed=seed, prompts=list(prompts))
        finally:
            self.task.rewards.load_state_dict(reward_stats)

    def generate(
        self, prompts: str | list[str], *, temperature: float | None = None, top_k: int = 0, top_p: float = 1.0,
        seed: int = 0,
    ) -> str | list[str]:
        """The policy's completion of one prompt (a string), or of each of a list of prompts (a list);
        the arguments are :meth:`evaluate`'s."""
        completions = self.evaluate(prompts, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed).completions
        return completions[0] if isinstance(prompts, str) else completions

    @torch.no_grad()
    def predict(
        self,
        observation: dict[str, Any],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """The next token for a single env's observation, or a batch of them: SB3's ``predict``, so
        ``stable_baselines3.common.evaluation.evaluate_policy`` runs on ``textenv/TextGen-v0``.

        Each call runs the whole sequence through the model (no KV cache): for speed,
        :meth:`generate` and :meth:`evaluate` sample in the batched env.

        Args:
            observation: ``{"input_ids", "attention_mask"}``, (L,) arrays or (N, L) batches.
            state: unused (the policy has no recurrent state); SB3's signature.
            episode_start: unused; SB3's signature.
            deterministic: the most likely token instead of a sample at the training temperature
                (drawn from torch's global random stream, as SB3's policies do).

        Returns:
            The actions, () or (N,) int64, and None (no recurrent state).
        """
        ids = torch.as_tensor(np.asarray(observation["input_ids"]), device=self.device)
        mask = torch.as_tensor(np.asarray(observation["attention_mask"]), device=self.device)
        single = ids.dim() == 1
        ids, mask = (ids[None], mask[None]) if single else (ids, mask)  # (N, L) each
        self.policy.eval()
        with autocast(self.device, self.bf16):
            logits = self.policy.lm(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False
            ).logits  # (N, L, V')
        last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # (N,) the last real token of each row
        logits = self._scaled(logits[torch.arange(len(ids), device=self.device), last].float())  # (N, V)
        if deterministic:
            actions = logits.argmax(-1)  # (N,)
        else:
            actions = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(1)  # (N,)
        actions = actions.cpu().numpy()
        return (actions[0] if single else actions), None

    # -------------------------------------------------------------- checkpoints

    def save(self, path: str | Path) -> Path:
        """Save a complete checkpoint: the policy as a transformers directory (``model/``,
        safetensors, with the tokenizer), the value head, optimizer, KL controller, normalizer
        statistics, RNG states, counters, the config and the run's definition (model, prompts,
        reward, env options). ``PPO.load(path)`` continues the same run. A LoRA policy's ``model/`` is its
        adapter (the base is recorded in the run's definition); ``textenv export PATH --merge OUT`` makes a plain
        transformers model of it."""
        return self.save_checkpoint(Path(path))

    def save_checkpoint(self, path: str | Path | None = None, *, optimizer: bool = True) -> Path:
        """Write a checkpoint (by default ``run_dir/checkpoints/iter_NNNNNN``) atomically, with a manifest.

        The files go into ``NAME.tmp``, each fsynced, then ``manifest.json`` (every file's size and sha256),
        then the directory is renamed and its parent fsynced (:mod:`textenv.agents.checkpoint`): a crash at any
        moment leaves the checkpoints before it loadable, and a partial one is never loaded.

        Args:
            path: where; by default ``run_dir/checkpoints/iter_NNNNNN``.
            optimizer: also write Adam's state (about twice the weights' size). Without it the
                checkpoint is weights-only: a resume from it starts Adam's moments afresh, so its
                first steps differ from those of the run that never stopped.

        With several processes every process calls it; the main one writes, with every process's
        random streams.

        Raises:
            DiskFullError: "no space left on DEVICE while saving PATH"; the partial checkpoint is removed.
        """
        if path is None:
            if not self.run_dir:
                raise ValueError("no run_dir: give save_checkpoint a path")
            path = self.run_dir / "checkpoints" / f"iter_{self.num_iterations:06d}"
        path = Path(path)
        streams = self.processes.objects((self._torch_rng_state(), self.prompt_rng.bit_generator.state))
        failure = None
        if self.processes.is_main:
            try:
                checkpoint.write_atomically(path, lambda tmp: self._write_checkpoint(tmp, optimizer, streams))
            except Exception as error:  # noqa: BLE001 - re-raised below, once every process knows
                failure = error
        if self.processes.any(failure is not None):
            raise failure or CheckpointError(f"the main process could not write {path}")
        self._saved = (path.resolve(), self.num_iterations, optimizer)
        if self.processes.is_main:
            self._prune_checkpoints(path)
        return path

    def _write_checkpoint(
        self, tmp: Path, optimizer: bool, streams: list[tuple[dict[str, torch.Tensor], dict[str, Any]]]
    ) -> None:
        """Fill a checkpoint directory; ``trainer_state.json`` last (the manifest comes after it)."""
        with _quiet_transformers_bars():  # "Writing model shards" would break our bar's line
            # A LoRA policy's is its adapter; peft's "auto" would look the base up on the hub to see whether
            # the vocabulary changed (it cannot: no embedding layer trains).
            self.policy.lm.save_pretrained(tmp / "model", **({"save_embedding_layers": False} if self.lora else {}))
        if hasattr(self.task.tokenizer, "save_pretrained"):
            self.task.tokenizer.save_pretrained(tmp / "model")
        heads = self._head_tensors()
        if heads:
            checkpoint.write_file(tmp / VALUE_FILE, safetensors.torch.save(heads))
        if self.reference is not None and not self.lora and not self.reference_is_env_model:  # PPO(env, model=sft)
            with _quiet_transformers_bars():
                self.reference.save_pretrained(tmp / "reference")
        if optimizer:
            checkpoint.write_file(tmp / OPTIMIZER_FILE, checkpoint.optimizer_bytes(self.optimizer.state_dict()))
        rng = {  # process 0's under the names a one-process run uses, process k's as "process{k}.NAME"
            (f"process{k}.{name}" if k else name): tensor.contiguous()
            for k, (state, _) in enumerate(streams) for name, tensor in state.items()
        }
        checkpoint.write_file(tmp / RNG_FILE, safetensors.torch.save(rng))
        checkpoint.write_json(tmp / run_definition.PROMPTS_FILE, run_definition.prompts_record(self.task))
        checkpoint.write_json(tmp / STATE_FILE, self._trainer_state(optimizer, [prompt for _, prompt in streams]))

    def _save_unless_saved(self) -> Path:
        """The run's checkpoint of this iteration, with the optimizer: written unless the periodic one
        (or the one resumed from) is it already; rewriting it would only open a window in which a kill
        leaves the iteration without a checkpoint."""
        path = self.run_dir / "checkpoints" / f"iter_{self.num_iterations:06d}"
        written = self._saved == (path.resolve(), self.num_iterations, True) and path.is_dir()
        if self.processes.objects(written)[0]:  # the main process's view: it is the one that writes
            return path
        return self.save_checkpoint(path)

    def _head_tensors(self) -> dict[str, torch.Tensor]:
        """What ``value.safetensors`` holds: the policy's state outside ``lm.``, a tied weight once."""
        heads, stored = {}, set()
        for key, tensor in self.policy.state_dict().items():
            if key.startswith("lm.") or tensor.data_ptr() in stored:  # a tied weight comes back through its tie
                continue
            stored.add(tensor.data_ptr())
            heads[key] = tensor.detach().contiguous()
        return heads

    def _lora_base_record(self) -> dict[str, str]:
        """A LoRA run's ``lora_base``: where its base weights come from (``model/`` holds the adapter only)."""
        if not self.lora:
            return {}
        return {run_definition.LORA_BASE: lora.base_source(self.policy.lm)}

    def _trainer_state(self, optimizer: bool, prompt_streams: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": checkpoint.FORMAT,
            "config": dataclasses.asdict(self.config),
            "run": {**run_definition.describe_task(self.task), **self._lora_base_record()},
            "metadata": self.metadata,
            "optimizer": optimizer,
            "num_iterations": self.num_iterations,
            "num_episodes": self.num_episodes,
            "kl_controller": self.kl_ctl.state_dict(),
            "score_stats": {"mean": float(self.score_stats.mean), "var": float(self.score_stats.var),
                            "count": float(self.score_stats.count)},
            "reward_pipeline": self.task.rewards.state_dict(),
            "num_processes": len(prompt_streams),
            "prompt_rng": prompt_streams[0],
            **({"process_prompt_rngs": prompt_streams} if len(prompt_streams) > 1 else {}),
            "history": self.history,
        }

    def _torch_rng_state(self) -> dict[str, torch.Tensor]:
        state = {
            "torch": torch.get_rng_state(),
            "sampling": self.sample_generator.get_state(),
            "shuffle": self.shuffle_generator.get_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def _set_torch_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        self.sample_generator.set_state(state["sampling"])
        self.shuffle_generator.set_state(state["shuffle"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    def _prune_checkpoints(self, written: Path) -> None:
        if not self.run or written.parent != self.run_dir / "checkpoints":
            return
        checkpoint.remove_leftovers(written.parent)  # of writes that a kill cut short
        periodic = sorted(p for p in written.parent.iterdir() if checkpoint.iteration_of(p) is not None)
        for old in periodic[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, path: str | Path, env: Any = None, **overrides: Any) -> PPO:
        """Restore an agent from a checkpoint to continue its run.

        The checkpoint is verified against its manifest first: a missing, truncated or altered
        file is refused naming it (never replaced by a fresh default).

        Args:
            path: a checkpoint directory (from :meth:`save` or a run's ``checkpoints/``).
            env: None (the default) rebuilds the run's env from the checkpoint: its tokenizer,
                prompt texts, reward spec and env options. An env given must define the same
                task (model, prompts, reward, max_new_tokens, prompt width, chat template,
                EOS ids, vocabulary), else it is refused naming what differs; to train the
                weights on another task, start a new run: ``PPO(env, model=load_causal_lm(path / "model"))``.
            **overrides: config fields to change, e.g. ``device``, ``run_dir``, ``progress``
                (applied as given: ``textenv train --resume`` decides which flags may change a run).

        Raises:
            CheckpointError: the checkpoint is damaged or incomplete (the file is named), or the env
                differs from the run's.
        """
        path = Path(path)
        checkpoint.verify(path)
        state = checkpoint.read_json(path / STATE_FILE)
        try:
            run = state["run"]
            config_options = {**state["config"], **overrides}
        except (KeyError, TypeError):
            raise checkpoint.CheckpointError(f"{path / STATE_FILE}: holds no run definition and config") from None
        written_by, running = int(state.get("num_processes", 1)), launched_processes()
        if written_by != running:  # each process continues its own random streams: the same number of them
            raise checkpoint.CheckpointError(
                f"{path} was written by a run of {written_by} process(es) and this one has {running}: resume it "
                f"with {written_by} (accelerate launch --num_processes {written_by} ...); to start a new run from its "
                f"weights, load {path / 'model'} as a model"
            )
        agent = cls.__new__(cls)
        agent.config = PPOConfig.from_options(config_options)
        device = resolve_device(agent.config.device)
        if env is None:
            task = run_definition.rebuild_task(path, run)
        else:
            task = _task_of(env)
            different = run_definition.differences(run, run_definition.describe_task(task))
            if different:
                raise checkpoint.CheckpointError(
                    f"the env differs from the run in {path}: {'; '.join(different)}. PPO.load(path) without an env "
                    f"continues the run as recorded; to train these weights on another task, start a new run "
                    f"with PPO(env, model=load_causal_lm('{path / 'model'}'))"
                )
        with _quiet_transformers_bars():  # "Loading weights" bars would bury the resume's one-line notes
            saved_reference = (path / "reference").exists()
            if lora.is_adapter_dir(path / "model"):  # the adapter only: on its base, which is the reference too
                base = run.get(run_definition.LORA_BASE) or run.get("model_path") or run["model"]
                try:
                    base_model = load_causal_lm(base, device=device, dtype=torch.float32)
                except Exception as exc:  # noqa: BLE001 - a moved directory, no network: one line naming it
                    raise CheckpointError(f"{path}: its LoRA base {base!r} ({run_definition.LORA_BASE} in "
                                          f"{STATE_FILE}) cannot be loaded ({type(exc).__name__}: "
                                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
                model = checkpoint.load_part(path / "model",
                                             lambda p: lora.load(base_model, checkpoint.check_safetensors(p)))
            else:
                model = checkpoint.load_part(path / "model", lambda p: load_causal_lm(
                    str(checkpoint.check_safetensors(p)), device=device, dtype=torch.float32))
            if not agent.config.uses_reference or lora.is_peft_model(model):  # (a LoRA's: _setup's)
                reference = None
            elif saved_reference:
                reference = frozen_copy(checkpoint.load_part(
                    path / "reference", lambda p: load_causal_lm(str(checkpoint.check_safetensors(p)), device=device,
                                                                 dtype=torch.float32)))
            else:
                reference = frozen_copy(load_causal_lm(run.get("model_path") or run["model"], device=device,
                                                       dtype=torch.float32))
        agent._setup(task, model, reference, reference_is_env_model=not saved_reference)
        if agent.config.uses_value_head:  # a missing head is an error: a fresh one would silently restart the critic
            heads = checkpoint.load_part(path / VALUE_FILE, lambda p: checkpoint.read_safetensors(p, device)[0])
            missing = sorted(set(agent._head_tensors()) - set(heads))
            unexpected = agent.policy.load_state_dict(heads, strict=False).unexpected_keys
            if missing or unexpected:
                raise checkpoint.CheckpointError(
                    f"{path / VALUE_FILE}: does not fit this agent's critic (missing {missing}, "
                    f"unexpected {unexpected})"
                )
        if state.get("optimizer", True):
            optimizer_state = checkpoint.load_part(path / OPTIMIZER_FILE,
                                                   lambda p: checkpoint.optimizer_state(p, device))
            groups, expected = len(optimizer_state["param_groups"]), len(agent.optimizer.param_groups)
            if groups != expected:
                raise checkpoint.CheckpointError(
                    f"{path / OPTIMIZER_FILE} holds {groups} parameter group(s) where this agent has {expected} "
                    "(the policy's, and the critic's with a value head): the checkpoint was written for another "
                    "advantage; load its weights as a model instead (model/ inside it)"
                )
            checkpoint.load_part(path / OPTIMIZER_FILE, lambda p: agent.optimizer.load_state_dict(optimizer_state))
        else:  # a weights-only checkpoint (save_optimizer=False)
            warnings.warn(f"{path} holds no {OPTIMIZER_FILE} (a weights-only checkpoint): Adam's moments start "
                          "afresh", stacklevel=2)
        for group, lr in zip(agent.optimizer.param_groups, agent.initial_learning_rates):  # the config's, overrides
            group["lr"], group["eps"] = lr, agent.config.adam_eps  # included (annealing rescales from these)
        rng = checkpoint.load_part(path / RNG_FILE, lambda p: checkpoint.read_safetensors(p, "cpu")[0])
        checkpoint.load_part(path / STATE_FILE, lambda p: agent._restore_state(rng, state))
        if agent.run_dir and path.parent == agent.run_dir / "checkpoints":
            agent._saved = (path.resolve(), agent.num_iterations, state.get("optimizer", True))
        return agent

    def _restore_state(self, rng: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        k = self.processes.index  # this process's own streams
        prefix = f"process{k}." if k else ""
        self._set_torch_rng_state({
            name[len(prefix):]: tensor for name, tensor in rng.items()
            if name.startswith(prefix) and (k or not name.startswith("process"))
        })
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.score_stats.mean = np.float64(state["score_stats"]["mean"])
        self.score_stats.var = np.float64(state["score_stats"]["var"])
        self.score_stats.count = state["score_stats"]["count"]
        self.task.rewards.load_state_dict(state["reward_pipeline"])
        self.prompt_rng.bit_generator.state = state["process_prompt_rngs"][k] if k else state["prompt_rng"]
        self.num_iterations = int(state["num_iterations"])
        self.num_episodes = int(state["num_episodes"])
        self.history = list(state["history"])
        self.metadata = dict(state.get("metadata") or {})

    def _log_samples(self, episodes: Episodes, n: int = 4) -> None:
        self.run.samples(self.num_iterations, episodes.prompts[:n], episodes.completions[:n], episodes.rewards[:n])
        if self.config.progress:
            for p, c, r in zip(episodes.prompts[:n], episodes.completions[:n], episodes.rewards[:n]):
                tqdm.write(f"  [{r:+.2f}] {p}\u27e6{c.strip()[:100]}\u27e7")


@contextlib.contextmanager
def _quiet_transformers_bars() -> Iterator[None]:
    """Turn transformers' own progress bars off for a while, as they were before."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _callbacks(callback: Any) -> list[IterationCallback]:
    """``learn``'s callback argument as a list, refusing what it cannot call."""
    callbacks = [] if callback is None else [callback] if not isinstance(callback, (list, tuple)) else list(callback)
    for cb in callbacks:
        if isinstance(cb, BaseCallback) or not callable(cb):
            raise TypeError(
                f"learn(callback=...) takes callables called as callback(agent, stats) after each iteration "
                f"(return False to stop), or a list of them; got {type(cb).__name__}"
                + (" (an SB3 BaseCallback needs an SB3 algorithm: wrap it in a function)"
                   if isinstance(cb, BaseCallback) else "")
            )
    return callbacks


def _weighted_sum(stats: Sequence[dict[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """Each key's sum of value x weight over ``stats`` (the maximum for ``*_max`` keys); every dict has the keys."""
    return {
        key: max(s[key] for s in stats) if key.endswith("_max") else sum(s[key] * w for s, w in zip(stats, weights))
        for key in stats[0]
    }


def _weighted_mean(stats: Sequence[dict[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """Weighted means of each key of ``stats`` (maxima for ``*_max`` keys); a key missing from some dicts
    (the entropy, logged in the first epoch only) is averaged over the dicts that have it."""
    keys = dict.fromkeys(k for s in stats for k in s)
    out = {}
    for key in keys:
        pairs = [(s[key], w) for s, w in zip(stats, weights) if key in s]
        if key.endswith("_max"):
            out[key] = max(v for v, _ in pairs)
        else:
            out[key] = sum(v * w for v, w in pairs) / max(sum(w for _, w in pairs), 1e-12)
    return out


def _stream_seed(seed: int, process: int) -> int:
    """The seed of a process's own random streams (process 0 uses ``seed`` itself)."""
    return int(np.random.SeedSequence([seed, process]).generate_state(1, dtype=np.uint32)[0])


def without_left_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row.

    The task pads every prompt to its longest one; a batch of shorter prompts need not
    run those columns. Positions come from the mask's cumsum, so nothing else moves.

    Args:
        input_ids: (b, L) left-padded prompts, then completions.
        attention_mask: (b, L).

    Returns:
        The same two, (b, L') with L' <= L.
    """
    first = int(attention_mask.any(0).int().argmax())  # the first column holding a real token
    return input_ids[:, first:], attention_mask[:, first:]


def _task_of(env: Any) -> TextTask:
    if isinstance(env, TextTask):
        return env
    task = getattr(getattr(env, "unwrapped", env), "task", None)
    if not isinstance(task, TextTask):
        raise TypeError(f"PPO needs a textenv env (textenv/TextGen-v0 or its vector env), got {env!r}")
    return task


class _Interrupt:
    requested = False


@contextlib.contextmanager
def _graceful_interrupt(say: bool = True) -> Iterator[_Interrupt]:
    """First SIGINT: ask the loop to stop at the next iteration boundary; second: abort. ``say``: print that
    (the main process does, for all of them)."""
    state = _Interrupt()

    def handler(signum, frame):
        if state.requested:
            raise KeyboardInterrupt
        state.requested = True
        if say:
            print("\nCtrl-C: finishing this iteration, then saving a checkpoint (press again to abort)", flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no graceful stop
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
