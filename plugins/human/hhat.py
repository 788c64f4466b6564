"""Ĥ, the model of human reinforcement (TAMER's H-hat), learned online from credited feedback.

Ĥ predicts the per-token reward the person would credit to a token, from the token
and the few tokens before it. It is a small separate model rather than a head on the
policy's hidden states, for three reasons: a reward source sees token ids, not the
policy's activations; Ĥ must work in ``textenv feedback label``, where no policy is
trained; and a separate model does not drift when PPO changes the policy's
representations, so what it learned from the person stays valid.

The architecture fits the delay: a keypress's credit is spread over the tokens shown
up to a few seconds before it, so a token's credited reward depends on the tokens that
preceded it. Ĥ embeds the token (hashed into ``buckets`` rows) and a bag of the
previous ``context`` tokens weighted by a learned weight per offset, and an MLP maps
both to a scalar::

    h(x_k) = MLP([E_tok(x_k), sum_j a_j E_ctx(x_{k-j})])        j = 1..context

It regresses the credited reward of every token shown while the person was giving
feedback (zeros included: silence from an attentive person means "nothing to say"),
from a replay buffer, with a few Adam steps whenever feedback arrives and on a
schedule while the display waits. Weights and config are saved as safetensors.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass(frozen=True, kw_only=True)
class HHatConfig:
    """Size and training settings of Ĥ."""

    buckets: int = 65_536
    """Rows of each embedding table; token ids are taken modulo this (exact for vocabularies up to it)."""
    dim: int = 2
    """Embedding width (small on purpose: credited rewards are noisy, wide embeddings overfit them)."""
    context: int = 8
    """Previous tokens Ĥ looks at besides the token itself."""
    hidden: int = 16
    """Width of the MLP's hidden layer."""
    learning_rate: float = 3e-3
    """Adam's learning rate."""
    batch_size: int = 256
    """Tokens per training step, drawn from the replay buffer."""
    buffer_size: int = 200_000
    """Most tokens kept in the replay buffer (the oldest are replaced first)."""
    updates_per_feedback: int = 20
    """Training steps after each batch of feedback arrives."""
    seed: int = 0
    """Seeds the initial weights and the replay sampling."""


class HHatNet(nn.Module):
    """The network: token embedding + offset-weighted bag of context embeddings → MLP → scalar."""

    def __init__(self, config: HHatConfig):
        super().__init__()
        # sparse gradients: a step touches only the rows in its batch (SparseAdam), not all of them
        self.token = nn.Embedding(config.buckets + 1, config.dim, padding_idx=0, sparse=True)
        self.context = nn.Embedding(config.buckets + 1, config.dim, padding_idx=0, sparse=True)
        self.offset_weight = nn.Parameter(torch.full((config.context,), 1.0 / max(config.context, 1)))
        self.mlp = nn.Sequential(nn.Linear(2 * config.dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))
        nn.init.normal_(self.token.weight, std=0.1)
        nn.init.normal_(self.context.weight, std=0.1)
        nn.init.zeros_(self.mlp[-1].weight)  # start at "no opinion": 0 everywhere
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Predict rewards for (N, 1 + C) bucketed windows (token, then previous tokens); returns (N,)."""
        token = self.token(windows[:, 0])  # (N, D)
        context = self.context(windows[:, 1:])  # (N, C, D); padding rows are zero
        context = (context * self.offset_weight[None, :, None]).sum(1)  # (N, D)
        return self.mlp(torch.cat([token, context], dim=-1)).squeeze(-1)  # (N,)


def token_windows(token_ids: Sequence[int], config: HHatConfig) -> np.ndarray:
    """Each token's window for Ĥ: (T, 1 + C) bucket ids, the token then the C before it (0 = none)."""
    ids = np.asarray(token_ids, dtype=np.int64) % config.buckets + 1  # (T,)
    padded = np.concatenate([np.zeros(config.context, dtype=np.int64), ids])  # (C + T,)
    columns = [padded[config.context - j : config.context - j + len(ids)] for j in range(config.context + 1)]
    return np.stack(columns, axis=1)  # (T, 1 + C)


class HumanRewardModel:
    """Ĥ with its replay buffer and optimizer.

    Example::

        hhat = HumanRewardModel()
        hhat.observe([[5, 9, 2]], [[0.0, 0.4, 0.1]], presses=1)
        hhat.update()
        hhat.predict([[5, 9, 2, 7]])   # [array of 4 floats]
        hhat.save("run/hhat.safetensors")
    """

    def __init__(self, config: HHatConfig = HHatConfig()):
        self.config = config
        torch.manual_seed(config.seed)
        self.net = HHatNet(config)
        tables = [self.net.token.weight, self.net.context.weight]
        dense = [p for p in self.net.parameters() if all(p is not t for t in tables)]
        self.optimizers = [
            torch.optim.SparseAdam(tables, lr=config.learning_rate),
            torch.optim.Adam(dense, lr=config.learning_rate),
        ]
        self.rng = np.random.default_rng(config.seed)
        self._windows = np.zeros((0, config.context + 1), dtype=np.int64)  # (N, 1 + C)
        self._targets = np.zeros(0, dtype=np.float32)  # (N,)
        self.presses_seen = 0
        self.updates = 0

    @property
    def buffer_len(self) -> int:
        """Tokens in the replay buffer."""
        return len(self._targets)

    def observe(self, token_ids: Sequence[Sequence[int]], rewards: Sequence[Sequence[float]], *,
                presses: int = 0) -> None:
        """Add credited episodes to the replay buffer.

        Args:
            token_ids: per episode, its token ids.
            rewards: per episode, the credited reward of each token.
            presses: how many keypresses produced these rewards (counts towards readiness).
        """
        windows, targets = [self._windows], [self._targets]
        for ids, r in zip(token_ids, rewards):
            if len(ids) != len(r):
                raise ValueError(f"an episode has {len(ids)} tokens but {len(r)} rewards")
            if len(ids):
                windows.append(token_windows(ids, self.config))
                targets.append(np.asarray(r, dtype=np.float32))
        self._windows, self._targets = np.concatenate(windows), np.concatenate(targets)
        excess = len(self._targets) - self.config.buffer_size
        if excess > 0:
            self._windows, self._targets = self._windows[excess:], self._targets[excess:]
        self.presses_seen += presses

    def update(self, steps: int | None = None) -> float:
        """Train on minibatches from the replay buffer; returns the mean squared error (nan if empty)."""
        if not self.buffer_len:
            return math.nan
        steps = self.config.updates_per_feedback if steps is None else steps
        self.net.train()
        losses = []
        with torch.enable_grad(), _one_thread():  # reward sources run inside the rollout's no_grad
            for _ in range(steps):
                losses.append(self._step())
        return float(np.mean(losses)) if losses else math.nan

    def _step(self) -> float:
        """One Adam step on a minibatch drawn from the replay buffer; returns its loss."""
        rows = self.rng.integers(self.buffer_len, size=min(self.config.batch_size, self.buffer_len))
        windows = torch.from_numpy(self._windows[rows])  # (B, 1 + C)
        targets = torch.from_numpy(self._targets[rows])  # (B,)
        loss = nn.functional.mse_loss(self.net(windows), targets)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        self.updates += 1
        return loss.item()

    @torch.no_grad()
    def predict(self, token_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Ĥ's per-token rewards for each episode: (T_i,) each."""
        self.net.eval()
        lengths = [len(ids) for ids in token_ids]
        if not sum(lengths):
            return [np.zeros(0) for _ in lengths]
        windows = np.concatenate([token_windows(ids, self.config) for ids in token_ids if len(ids)])
        flat = self.net(torch.from_numpy(windows)).double().numpy()  # (sum T_i,)
        return np.split(flat, np.cumsum(lengths)[:-1])

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the weights (safetensors) with the config and counters in its metadata, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        metadata = {
            "format": "textenv-hhat",
            "config": json.dumps(asdict(self.config)),
            "presses_seen": str(self.presses_seen),
            "updates": str(self.updates),
        }
        save_file(state, str(tmp), metadata=metadata)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> HumanRewardModel:
        """Load what :meth:`save` wrote (the replay buffer is rebuilt from the store by the caller).

        Raises:
            ValueError: the file is not a saved Ĥ.
        """
        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != "textenv-hhat":
            raise ValueError(f"{path}: not a saved Ĥ model (no textenv-hhat metadata)")
        model = cls(HHatConfig(**json.loads(metadata["config"])))
        model.net.load_state_dict(load_file(str(path)))
        model.presses_seen = int(metadata["presses_seen"])
        model.updates = int(metadata["updates"])
        return model


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run Ĥ's tiny ops on one thread: spread over a busy machine's cores they are 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
