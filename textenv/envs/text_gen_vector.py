"""The batched text-generation env: N episodes on torch tensors, one token per step each.

The per-token path is a handful of tensor ops on the chosen device: write the
actions at each row's position, update the mask, compare with EOS and the length
limit. Decoding and rewards happen once per step for the rows whose episode ended,
in one batched call of the reward pipeline. The policy keeps its own KV cache; the
env only appends ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.envs.task import TextTask
from textenv.prompts import shortened


class TextGenVectorEnv(VectorEnv):
    """N text-generation episodes stepped together on torch tensors.

    Observations are a dict of (N, L) int64 tensors ``input_ids`` and
    ``attention_mask``: the prompt left-padded to P positions, then the completion
    written from position P on. Rewards, terminations and truncations are (N,)
    tensors on the env's device. ``info`` follows Gymnasium's vector convention (a
    value array and a ``_key`` mask per key) and, for the rows whose episode ended,
    holds ``prompt``, ``completion``, ``reward_terms`` (each term by name),
    ``raw_reward_terms`` and, when a source gives them, ``token_rewards``.

    Autoreset follows Gymnasium 1.x, info included, as ``SyncVectorEnv`` lays it out:
    ``next-step`` by default (a finished row resets at the next ``step``, which ignores
    its action, returns reward 0 and the new episode's ``prompt`` in info);
    ``same-step`` (the reset observation comes back at once with the new ``prompt``;
    the final one is in ``info["final_obs"]`` and the ended episode's info in
    ``info["final_info"]``); or ``disabled``: a finished row stays frozen, ignoring
    actions with reward 0, until ``reset(options={"reset_mask": mask})`` or a full
    reset. Sub-env i is seeded with ``seed + i``, like ``SyncVectorEnv``.
    """

    metadata = {"render_modes": ["ansi", "human"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        device: str | torch.device = "cpu",
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        task: TextTask | None = None,
        **task_options: Any,
    ):
        """Create the env.

        Args:
            num_envs: N, the number of episodes stepped together.
            device: where the tensors live.
            autoreset_mode: ``"NextStep"``, ``"SameStep"`` or ``"Disabled"`` (or the enum).
            render_mode: ``"ansi"`` or ``"human"``.
            task: a ready :class:`TextTask` to share; otherwise one is built from
                ``task_options`` (see :meth:`TextTask.build` for them).
        """
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            # TypeError, as for an unexpected argument: SB3's make_vec_env retries without it
            raise TypeError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.task = task if task is not None else TextTask.build(**task_options)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.render_mode = render_mode
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}

        self.single_observation_space = self.task.observation_space()
        self.single_action_space = self.task.action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        t = self.task
        # Fresh rows, one per prompt, so a reset is one index_copy_ per tensor.
        self._fresh_ids, self._fresh_mask = self._fresh_rows(t.prompt_ids, t.prompt_mask)  # (K, L) each
        self._eos = torch.tensor(t.eos_ids, device=self.device)
        self._ids = torch.full((num_envs, t.seq_len), t.pad_id, dtype=torch.long, device=self.device)
        self._mask = torch.zeros_like(self._ids)
        self._pos = torch.zeros(num_envs, dtype=torch.long, device=self.device)  # tokens generated
        self._finished = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self._rows = torch.arange(num_envs, device=self.device)
        self.row_rngs: list[np.random.Generator | None] = [None] * num_envs
        self.row_prompts: list[str] = [""] * num_envs
        self._needs_reset = True
        self._ended_last_step = False  # known without a device sync: rows to autoreset exist

    # ------------------------------------------------------------------ reset

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Start new episodes: each row draws a prompt with its own generator.

        Args:
            seed: an int (row i gets ``seed + i``), a list of N seeds, or None.
            options: ``reset_mask``: a (N,) bool numpy array of the rows to reset (the
                others continue); ``prompts``: one prompt string per reset row, instead
                of drawing from the prompt set.

        Returns:
            The observations and ``info`` with the ``prompt`` of each reset row.
        """
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        elif not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (self.num_envs,)):
            raise ValueError(f"options['reset_mask'] must be a ({self.num_envs},) bool numpy array")
        if isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if seed is not None and len(seed) != self.num_envs:
            raise ValueError(f"got {len(seed)} seeds for {self.num_envs} envs")
        prompts = options.pop("prompts", None)
        if options:  # before any row is touched
            raise ValueError(f"unknown reset options: {', '.join(options)}")
        rows = np.flatnonzero(mask)
        for i in rows:
            if (seed is not None and seed[i] is not None) or self.row_rngs[i] is None:
                self.row_rngs[i], _ = seeding.np_random(None if seed is None else seed[i])
        self._start_episodes(rows, prompts)
        self._needs_reset = False
        self._ended_last_step = bool(self._finished.any())
        return self._observation(), self._reset_info(rows)

    def _fresh_rows(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole observation rows (n, L) for prompts (n, P): the prompt, then an empty completion."""
        n, width = prompt_ids.shape
        ids = torch.full((n, self.task.seq_len), self.task.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        ids[:, :width] = prompt_ids.to(self.device)
        mask[:, :width] = prompt_mask.to(self.device)
        return ids, mask

    def _start_episodes(self, rows: np.ndarray, prompts: list[str] | None) -> None:
        """Write a fresh prompt into each of ``rows`` (per episode, not per token)."""
        if not len(rows):
            return
        if prompts is None:
            picks = [int(self.row_rngs[i].integers(len(self.task.prompts))) for i in rows]
            index = torch.as_tensor(picks, device=self.device)
            ids, mask = self._fresh_ids.index_select(0, index), self._fresh_mask.index_select(0, index)
            texts = [self.task.prompts[k] for k in picks]
        else:
            if len(prompts) != len(rows):
                raise ValueError(f"got {len(prompts)} prompts for {len(rows)} rows to reset")
            ids, mask = self._fresh_rows(*self.task.encode(prompts))  # (R, L) each
            texts = list(prompts)
        rows_t = torch.as_tensor(rows, device=self.device)
        self._ids.index_copy_(0, rows_t, ids)
        self._mask.index_copy_(0, rows_t, mask)
        self._pos.index_fill_(0, rows_t, 0)
        self._finished.index_fill_(0, rows_t, False)
        for i, text in zip(rows, texts):
            self.row_prompts[i] = text

    # ------------------------------------------------------------------- step

    def step(self, actions):
        """Append one token per row.

        Args:
            actions: (N,) token ids: a torch tensor (any device), numpy array or list.

        Returns:
            observations, rewards (N,) float32, terminated (N,) bool, truncated (N,)
            bool (tensors on the env's device), and info.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = torch.as_tensor(actions, device=self.device).reshape(self.num_envs).long()
        width, limit = self.task.prompt_width, self.task.max_new_tokens
        stale = self._finished  # rows whose episode ended at an earlier step
        active = ~stale
        bad_action = active & ((actions < 0) | (actions >= self.task.vocab_size))
        terminated = active & torch.isin(actions, self._eos)
        truncated = active & ~terminated & (self._pos + 1 >= limit)
        ended = terminated | truncated
        # The per-token path's one device-to-host read: which rows ended (the reward pipeline runs on
        # the host, and Gymnasium wants an episode's info at the step it ends) and whether an action
        # was bad, (N + 1,) in one transfer.
        flags = torch.cat([ended, bad_action.any().unsqueeze(0)]).cpu().numpy()
        rows, any_bad = np.flatnonzero(flags[:-1]), bool(flags[-1])
        any_ended = len(rows) > 0
        if any_bad:  # before anything changes, so the env stays as it was
            row = int(bad_action.nonzero()[0])
            raise ValueError(
                f"action {int(actions[row])} of env {row} is outside the vocabulary [0, {self.task.vocab_size})"
            )
        # Write each active row's token at its position; finished rows keep theirs.
        at = (width + self._pos.clamp(max=limit - 1)).unsqueeze(1)  # (N, 1)
        self._ids.scatter_(1, at, torch.where(active, actions, self._ids.gather(1, at).squeeze(1)).unsqueeze(1))
        self._mask.scatter_(1, at, (active | self._mask.gather(1, at).squeeze(1).bool()).long().unsqueeze(1))
        self._pos += active.long()
        self._finished = stale | ended
        rewards = torch.zeros(self.num_envs, dtype=torch.float32, device=self.device)

        info: dict[str, Any] = {}
        if any_ended:
            info, episode_rewards = self._score(rows, terminated)
            rewards[torch.as_tensor(rows, device=self.device)] = torch.as_tensor(
                episode_rewards, dtype=torch.float32, device=self.device
            )

        ended_info = info
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and self._ended_last_step:
            restarted = stale.nonzero().squeeze(1).cpu().numpy()
            self._start_episodes(restarted, None)
            info = _merge_info(info, self._reset_info(restarted))  # as SyncVectorEnv: the reset's info
        self._ended_last_step = any_ended
        obs = self._observation()
        if self.autoreset_mode == AutoresetMode.SAME_STEP and any_ended:
            # As SyncVectorEnv: the ended episodes' info under final_info, the new ones' at the top.
            info = self._row_info({"final_obs": [self._row_obs(obs, i) for i in rows]}, rows)
            info["final_info"], info["_final_info"] = ended_info, info["_final_obs"].copy()
            self._start_episodes(rows, None)
            info.update(self._reset_info(rows))
            obs = self._observation()
        if self.render_mode == "human" and any_ended:
            _print_ended(rows, ended_info, rewards)
        return obs, rewards, terminated, truncated, info

    def _score(self, rows: np.ndarray, terminated: torch.Tensor) -> tuple[dict[str, Any], np.ndarray]:
        """Decode the ended rows and call the reward pipeline once for all of them."""
        width = self.task.prompt_width
        index = torch.as_tensor(rows, device=self.device)
        # One read for the ended rows, not one per field: (R, 2 + T) length, EOS flag, completion ids.
        block = torch.cat([self._pos[index, None], terminated[index, None].long(), self._ids[index, width:]], 1)
        block = block.tolist()
        completion_ids = [row[2 : 2 + row[0]] for row in block]
        ended_by_eos = [bool(row[1]) for row in block]
        completions = self.task.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        prompts = [self.row_prompts[i] for i in rows]
        tokens = None
        if self.task.rewards.wants_tokens:  # per-token text, for sources that show or judge tokens
            # Special tokens (EOS) decode to "", so the pieces join to the completion's text.
            flat = [[i] for ids in completion_ids for i in ids]
            pieces = iter(self.task.tokenizer.batch_decode(flat, skip_special_tokens=True))
            tokens = [[next(pieces) for _ in ids] for ids in completion_ids]
        columns = self.task.columns_for(prompts)  # the prompts' other dataset columns, for TRL-style functions
        extra = {"columns": columns} if columns else {}
        batch = self.task.rewards(prompts, completions, completion_ids, ended_by_eos, tokens, **extra)
        values = {
            "prompt": prompts,
            "completion": completions,
            "reward_terms": batch.terms,
            "raw_reward_terms": batch.raw_terms,
        }
        if batch.token_rewards is not None:
            values["token_rewards"] = batch.token_rewards
        return self._row_info(values, rows), batch.total

    # ------------------------------------------------------------- utilities

    def _observation(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self._ids.clone(), "attention_mask": self._mask.clone()}

    @staticmethod
    def _row_obs(obs: dict[str, torch.Tensor], i: int) -> dict[str, np.ndarray]:
        return {k: v[i].cpu().numpy() for k, v in obs.items()}

    def _reset_info(self, rows: np.ndarray) -> dict[str, Any]:
        """The info of the episodes just started in ``rows``: their prompts."""
        return self._row_info({"prompt": [self.row_prompts[i] for i in rows]}, rows)

    def _row_info(self, values: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
        """Spread per-row values into Gymnasium's vector info: a (N,) array and a ``_key`` mask each."""
        present = np.zeros(self.num_envs, dtype=bool)
        present[rows] = True
        info: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, dict):
                info[key] = self._row_info(value, rows)
            elif isinstance(value, np.ndarray) and value.dtype != object:
                full = np.zeros(self.num_envs, dtype=value.dtype)
                full[rows] = value
                info[key] = full
            else:
                full = np.empty(self.num_envs, dtype=object)
                for i, v in zip(rows, value):
                    full[i] = v
                info[key] = full
            info[f"_{key}"] = present.copy()
        return info

    def completion_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the completion region: ids (N, T) and mask (N, T)."""
        width = self.task.prompt_width
        return self._ids[:, width:].clone(), self._mask[:, width:].clone()

    def completions(self) -> list[str]:
        """The completion of each row so far, decoded (for display, not the token loop)."""
        width = self.task.prompt_width
        rows = [ids[:n] for ids, n in zip(self._ids[:, width:].tolist(), self._pos.tolist())]
        return self.task.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def render(self) -> list[str] | None:
        """Each row's prompt (a long one shortened, with its length) and completion so far, the completion in ⟦ ⟧."""
        texts = [f"{shortened(p)}\u27e6{c}\u27e7" for p, c in zip(self.row_prompts, self.completions())]
        if self.render_mode == "human":
            print("\n".join(texts))
            return None
        return texts

    def __repr__(self) -> str:
        return f"TextGenVectorEnv(num_envs={self.num_envs}, device={self.device}, model={self.task.model_name!r})"


def _print_ended(rows: np.ndarray, info: dict[str, Any], rewards: torch.Tensor) -> None:
    """Human rendering: each ended episode's prompt, completion, reward and reward terms."""
    for i in rows:
        terms = ", ".join(f"{k}={v[i]:+.3f}" for k, v in info["reward_terms"].items() if not k.startswith("_"))
        print(f"[env {i}] {shortened(info['prompt'][i])}\u27e6{info['completion'][i]}\u27e7  "
              f"reward {float(rewards[i]):+.3f} ({terms})")


def _merge_info(info: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Gymnasium vector infos of different rows combined: each key's values where its ``_key`` mask is set."""
    merged = dict(info)
    for key, value in other.items():
        if key.startswith("_"):
            continue
        mask = other[f"_{key}"]
        if key not in merged:
            merged[key], merged[f"_{key}"] = value, mask
        elif isinstance(value, dict):
            merged[key] = _merge_info(merged[key], value)
            merged[f"_{key}"] = merged[f"_{key}"] | mask
        else:
            merged[key] = np.where(mask, value, merged[key])
            merged[f"_{key}"] = merged[f"_{key}"] | mask
    return merged
