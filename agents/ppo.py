"""Token-level PPO for causal language models in a textenv environment.

One iteration: sample ``batch_size`` episodes in the batched env (the policy keeps
its KV cache) → the policy's log-probs and values and the reference's log-probs from
batched full forwards, as the update computes them → per-token KL penalty, the episode
score at the last token, per-token rewards from sources → GAE (or a critic-free
group baseline) → ``ppo_epochs`` passes of clipped PPO over mini-batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.running_mean_std import RunningMeanStd
from tqdm.auto import tqdm

from textenv.agents import checkpoint, learn_control, lora, ppo_checkpoint, run_definition, run_dir
from textenv.agents.iteration_state import IterationState
from textenv.agents.policy import ActorCritic, prepare_models
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
    weighted_mean,
    weighted_sum,
    without_left_padding,
)
from textenv.agents.processes import Processes
from textenv.agents.run_log import RunLog, plot_reward_curve
from textenv.devices import autocast, keep_freed_cpu_memory, resolve_device, use_bf16
from textenv.envs.task import TextTask
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.generation import Episodes, SamplingConfig, generate_episodes, position_ids
from textenv.models import DEFAULT_MODEL, load_causal_lm, resolve_model
from textenv.prompts import shortened
from textenv.rewards import RewardError, RewardInterrupted

HISTORY_LIMIT = 2000
"""Iterations whose statistics :attr:`PPO.history` holds at most: past it, its older half is thinned to every
second iteration, so memory and checkpoints stay bounded on long runs (TensorBoard keeps every iteration)."""

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

        Raises:
            RunDirError: ``run_dir`` is in use by another process, or holds another run's checkpoints
                (``overwrite=True`` replaces that run).
        """
        self.config = PPOConfig.from_options(options)
        self._setup(env, model, reference=None, reference_is_env_model=model is None)
        self._open_run(resumed_from=None)

    def _setup(
        self, env: Any, model: torch.nn.Module | None, reference: torch.nn.Module | None, reference_is_env_model: bool,
        processes: Processes | None = None,
    ) -> None:
        """Build everything but the run's state. ``reference_is_env_model``: the reference is the env's
        ``model`` as loaded, so checkpoints need not hold a copy of it."""
        cfg = self.config
        self.task = task_of(env)
        self.processes = processes or Processes.for_run(cfg.device)
        self.device = self.processes.device or resolve_device(cfg.device)
        self.bf16 = use_bf16(self.device, self.processes.precision(cfg.precision))
        self.local_batch_size, self.local_mini_batch_size, self.micro_batch_size = self.processes.shares(cfg)
        if self.device.type == "cpu" and cfg.keep_cpu_memory:
            keep_freed_cpu_memory()
        self.env = TextGenVectorEnv(self.local_batch_size, task=self.task, device=self.device,
                                    autoreset_mode="Disabled")
        if model is None:
            if self.task.model_name is None:
                raise ValueError("the env was built from a tokenizer only: give PPO a model=")
            model = load_causal_lm(self.task.model_name, device=self.device, dtype=torch.float32)
        self.reference_is_env_model = reference_is_env_model
        model, self.reference = prepare_models(model, reference, cfg, self.device, self.bf16,
                                               lora_base=lambda: self._base_source(model))
        self.lora = lora.is_peft_model(model)
        self.policy = ActorCritic(
            model, with_value_head=cfg.uses_value_head, separate_value_model=cfg.value_model == "separate"
        ).to(self.device)
        self.policy.lm.config.use_cache = True
        self.trained = self.processes.prepare(self.policy)  # the update's forwards: gradients averaged (DDP)
        self.optimizer = torch.optim.Adam(  # fused: one kernel for all parameters, 5x faster steps on a CPU
            self.policy.param_groups(cfg.learning_rate, cfg.value_learning_rate), eps=cfg.adam_eps, fused=True,
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
        self.run: RunLog | None = None  # the main process's, once the run directory is claimed (_open_run)
        self.resume_hint: str | None = None
        """What the Ctrl-C message tells the user to run to continue (``textenv train`` names its command);
        None: ``PPO.load(<the checkpoint>)``."""
        self.stopped_by: str | None = None
        """Who stopped the last :meth:`learn` early, when not a Ctrl-C (``"you pressed q"``, the human source's)."""
        self.last_checkpoint: tuple[Path, int, bool] | None = None  # its path, iteration, whether with Adam's state
        self._schedule_end: int | None = None  # the run's episode count where the current learn() call ends
        self._bar: tqdm | None = None
        self._start = IterationState()  # the current iteration's start, to undo a failed one

    def _open_run(self, resumed_from: Path | None) -> None:
        """Claim the run directory (main process): lock it while the agent lives; refuse another run's checkpoints
        there unless ``overwrite`` (then delete that run's files); a resume sets aside its run's newer checkpoints.

        Raises:
            RunDirError: the directory is in use by another process, or holds another run's checkpoints.
        """
        if not self.run_dir or not self.processes.is_main:
            return
        lock = run_dir.RunLock(self.run_dir).acquire()
        weakref.finalize(self, lock.release)
        own = run_dir.check_claim(self.run_dir, resumed_from=resumed_from, overwrite=self.config.overwrite,
                                  name="run_dir", hints=("PPO.load", "overwrite=True"))
        if own:
            aside = run_dir.set_aside_newer(self.run_dir, self.num_iterations, keep=resumed_from)
            if aside:
                print(f"resume: set aside {', '.join(aside)} in {self.run_dir / run_dir.CHECKPOINTS} as NAME"
                      f"{run_dir.ABANDONED} (newer than iteration {self.num_iterations}, which this run continues "
                      "from)", flush=True)
        elif self.config.overwrite:
            run_dir.remove_run_files(self.run_dir)
        self.run = RunLog(self.run_dir, resumed_at=(self.num_iterations, self.num_episodes) if own else None)

    def _base_source(self, model: torch.nn.Module) -> str | None:
        """Where a LoRA policy's base weights come from: the env's model (a hub id, or a directory as an absolute
        path), else the model's own ``name_or_path`` (None when it has none, e.g. built from a config)."""
        if self.reference_is_env_model:
            run = run_definition.describe_task(self.task)
            # smollm2-135m as its converted directory: a name only textenv reads would not load in peft's
            # AutoPeftModelForCausalLM
            return run["model_path"] or (resolve_model(run["model"]) if run["model"] == DEFAULT_MODEL else run["model"])
        return getattr(model, "name_or_path", None) or None

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
        total_episodes: int | None = None,
        *,
        callback: learn_control.IterationCallback | Sequence[learn_control.IterationCallback] | None = None,
        reset_num_episodes: bool = True,
        **sb3_arguments: Any,
    ) -> PPO:
        """Train for ``total_episodes`` more episodes (or, with ``reset_num_episodes=False``,
        until the run has seen ``total_episodes`` in all, as when resuming).

        A first Ctrl-C, or a person's q with the human source (:attr:`stopped_by`), finishes the current iteration,
        saves a checkpoint and returns; a second one aborts at once. Every way out that writes a checkpoint also
        writes the reward curve.

        Args:
            total_episodes: episodes to train for (rounded up to whole iterations).
            callback: called as ``callback(agent, stats)`` after each iteration, with that
                iteration's logged scalars (one callable or a list of them). Returning
                ``False`` stops training there, as SB3's callbacks do; the run then ends
                as it would at ``total_episodes``, with a checkpoint and the reward curve.
            reset_num_episodes: count ``total_episodes`` from now (True) or from the run's
                start (False).
            **sb3_arguments: refused with a message that says what textenv counts (SB3's
                ``total_timesteps`` would be tokens here, whose number per episode varies).

        Raises:
            TrainingError: a non-finite loss or gradient, or a reward source's error such
                as a NaN reward (a checkpoint of the state after the last good iteration is written
                first when there is a run directory).
        """
        learn_control.refuse_sb3_arguments(sb3_arguments)
        if total_episodes is None:
            raise TypeError("PPO.learn() needs total_episodes, the number of episodes to train for")
        callbacks = learn_control.callbacks(callback)
        target = self.num_episodes + total_episodes if reset_num_episodes else total_episodes
        iterations = max(0, math.ceil((target - self.num_episodes) / self.config.batch_size))
        self._schedule_end, self.stopped_by = target, None
        show = self.config.progress and self.processes.is_main
        # With a person at the terminal (the human source) a bar would print into their screen: a line per
        # iteration, between batches, instead.
        lines = show and self.task.rewards.interactive
        bar = tqdm(total=iterations, desc="PPO", unit="it", disable=not show or lines)
        self._bar = None if bar.disable else bar
        try:
            # the bar closes before any error is printed
            with bar, learn_control.graceful_interrupt(say=self.processes.is_main) as interrupt:
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
                        self.stopped_by = interrupt.stopped_by  # (textenv train: a person's stop exits 0)
                        self._save_and_say(*interrupt.report(self.num_iterations))
                        return self
            if self.run_dir:
                ppo_checkpoint.save_unless_saved(self)
        finally:
            self._bar = None
            self._schedule_end = None  # train_iteration() outside learn() keeps the rates where they are
            if self.run and self.history:  # finished, interrupted or stopped: the curve beside the checkpoint
                plot_reward_curve(self.history, self.run.dir / "reward_curve.png")
        return self

    def _save_and_say(self, what: str, saved: str) -> None:
        """Save this iteration's checkpoint (unless saved) in the run directory; say ``what``, where and how to
        resume (the main process)."""
        where = ppo_checkpoint.save_unless_saved(self) if self.run_dir else None
        if self.processes.is_main:
            hint = self.resume_hint or f"PPO.load('{where}')"
            print(f"{what}; {saved} {where}; resume with: {hint}" if where else what, flush=True)

    def train_iteration(self) -> dict[str, float]:
        """Sample one batch and run the PPO epochs on it; returns the logged scalars."""
        cfg = self.config
        start = time.perf_counter()
        # The weights are kept only where a last-good checkpoint can be written (they cost memory).
        self._start.capture(self, weights=self.run_dir is not None)
        self._show_phase("rollout")
        try:
            episodes = self.rollout()
        except RewardError as error:  # e.g. a plugin's NaN
            self._stop(str(error), cause=error)
        except RewardInterrupted:  # Ctrl-C in a reward call (one that hangs, say): save the last good state, stop
            self._start.restore(self)  # so that resuming samples this batch again
            self._save_and_say("\nCtrl-C in a reward call", f"checkpoint of iteration {self.num_iterations} in")
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
        (:meth:`textenv.rewards.RewardPipeline.one_batch`). A reward source's error or a Ctrl-C in its call on
        any process stops every process here the same way (a Ctrl-C anywhere wins), so that all of them take the
        same path after it and none waits for another that has left.
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
            kind = 0 if failure is None else 2 if isinstance(failure, RewardInterrupted) else 1
            worst = int(self.processes.max(torch.tensor([kind], device=self.device)))  # a Ctrl-C wins over an error
            if worst:  # raised inside: the batch leaves no statistics behind
                if worst == 2:
                    raise failure if kind == 2 else RewardInterrupted("Ctrl-C in another process's reward call")
                raise failure or RewardError("a reward source failed in another process (its message names it)")
        return episodes

    def _draw_prompts(self, n: int) -> list[str]:
        cfg = self.config
        group = cfg.group_size if cfg.advantage != "gae" else 1
        picks = self.prompt_rng.integers(len(self.task.prompts), size=n // group)
        return [self.task.prompts[k] for k in picks for _ in range(group)]

    @torch.no_grad()
    def make_batch(self, episodes: Episodes) -> tuple[Batch, dict[str, float]]:
        """The rollout policy's and the reference's log-probs, KL-penalized per-token rewards and advantages.

        The "old" log-probs and values are recomputed here with one batched forward, the same kind of forward
        at the same precision as the update's and the reference's: the rollout's cached one-token-at-a-time
        decoding rounds differently under bf16, and clipping and the KL penalty would act on that noise.
        """
        cfg = self.config
        tokens = episodes.completion_ids  # (B, T)
        mask = episodes.completion_mask.float()  # (B, T)
        # Every forward of this batch, here and in the update, runs micro-batches of the same width (under bf16
        # a row's logits change with it), so padding is dropped once for the whole batch, not per micro-batch.
        input_ids, attention = without_left_padding(
            torch.cat([episodes.prompt_ids, tokens], dim=1),  # (B, L)
            torch.cat([episodes.prompt_mask, episodes.completion_mask], dim=1),  # (B, L)
        )  # (B, L') each
        t = tokens.shape[1]
        logprobs = torch.zeros_like(mask)  # (B, T)
        values = torch.zeros_like(mask)  # (B, T); stays 0 without a value head
        ref_logprobs = logprobs  # (B, T); the policy's own (KL 0) without a reference
        keep_full = cfg.kl_estimator_used == "full" and self.reference is not None  # (the config ties it to the loss)
        ref_logp_full = (  # (B, T, V) fp32: bf16 would put an identical reference's KL off 0
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
                    input_ids=ids, attention_mask=att, position_ids=position_ids(att),
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
                stats = self.processes.reduce_stats(weighted_sum(micro_stats, [float(share) for share in shares]))
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
        stats = {f"losses/{k}": v for k, v in weighted_mean(*zip(*logged)).items()} if logged else {}
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
            self._stop(f"the loss is {loss.item()} (policy loss {stats['policy_loss']})")
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
            self._stop(f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        return grad_norm

    def _stop(self, what: str, *, cause: Exception | None = None) -> None:
        """Raise TrainingError, first undoing the failed iteration and saving the state after the last good one as
        ``last-good`` when there is a run directory."""
        self.optimizer.zero_grad(set_to_none=True)
        self._start.restore(self)  # (the weights too, where a run directory made it keep them)
        where = ""
        if self.run_dir:
            path = self.save_checkpoint(self.run_dir / run_dir.CHECKPOINTS / checkpoint.LAST_GOOD)
            where = f"; the state after the last good iteration is saved in {path}"
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
        self, observation: dict[str, Any], state: Any = None, episode_start: Any = None, deterministic: bool = False,
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
                input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False
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
        return ppo_checkpoint.save(self, path, optimizer=optimizer)

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
                Without ``run_dir`` the run continues in the run directory the checkpoint is in now (a
                copy writes into the copy), whose newer checkpoints are set aside as ``NAME.abandoned``
                (:func:`~textenv.agents.run_dir.run_of_checkpoint`). ``overwrite`` is never inherited.

        Raises:
            CheckpointError: the checkpoint is damaged or incomplete (the file is named), lists files its
                manifest does not, or the env differs from the run's.
            RunDirError: the run directory is in use by another process, or holds another run's checkpoints.
        """
        return ppo_checkpoint.load(cls, Path(path), env, overrides)

    def _log_samples(self, episodes: Episodes, n: int = 4) -> None:
        self.run.samples(self.num_iterations, episodes.prompts[:n], episodes.completions[:n], episodes.rewards[:n])
        if self.config.progress:
            for p, c, r in zip(episodes.prompts[:n], episodes.completions[:n], episodes.rewards[:n]):
                tqdm.write(f"  [{r:+.2f}] {shortened(p)}\u27e6{c.strip()[:100]}\u27e7")


def _stream_seed(seed: int, process: int) -> int:
    """The seed of a process's own random streams (process 0 uses ``seed`` itself)."""
    return int(np.random.SeedSequence([seed, process]).generate_state(1, dtype=np.uint32)[0])


def task_of(env: Any) -> TextTask:
    """The :class:`TextTask` of a textenv env, vector env, wrapper of either, or the task itself."""
    if isinstance(env, TextTask):
        return env
    task = getattr(getattr(env, "unwrapped", env), "task", None)
    if not isinstance(task, TextTask):
        raise TypeError(f"PPO needs a textenv env (textenv/TextGen-v0 or its vector env), got {env!r}")
    return task


