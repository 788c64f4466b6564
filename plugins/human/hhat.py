"""Ĥ, the model of human reinforcement (TAMER's H-hat), learned online from credited feedback.

Ĥ predicts the per-token reward the person would credit to a token. It is a small separate
model rather than a head on the policy's hidden states, for three reasons: a reward source
sees token ids, not the policy's activations; Ĥ must work in ``textenv feedback label``,
where no policy is trained; and a separate model does not drift when PPO changes the
policy's representations, so what it learned from the person stays valid.

It learns from the credited reward of every token shown while the person was giving
feedback (zeros included: silence from an attentive person means "nothing to say"), kept
in a replay buffer. That target is mostly noise about the token itself: a keypress's
credit is spread over the ~15 tokens shown in the 0.2-4 s before it, so a token's credit
says more about its neighbours than about it. Two estimators:

* ``token`` (the default): each token id's own value, with its neighbours' shares of the
  credit explained away. The credit is modelled as what it is, the values of the tokens
  around each token spread over the delay window by weights ``a_j`` learned with them::

      credit_k = m + sum_j a_j v(x_{k+j})      j = -window_before..window_after, sum_j a_j = 1

  fitted by ridge regression (``v`` shrunk toward 0 with a pseudo-count of ``shrinkage``
  showings, so rarely seen tokens stay near the mean), alternating with least squares
  for ``a``. Ĥ then predicts a token from itself alone, ``m + a_0 v(x)``: its expected
  credit with its neighbours' shares averaged out, in the units of the credit. Compared
  with a per-token mean of the credit (the same prediction without the deconvolution),
  the neighbours' presses no longer add to each token's noise. The fit is a few
  conjugate-gradient solves over the buffer (on one core about 0.2 s for 6,000 tokens,
  5 s for 200,000), so nothing depends on a number of optimizer steps.
* ``mlp``: the earlier network, kept for Ĥ files saved before ``token`` existed and for
  comparison: it embeds the token (hashed into ``buckets`` rows) and a bag of the previous
  ``context`` tokens weighted per offset, and an MLP maps both to a scalar, trained with a
  few Adam steps whenever feedback arrives and on a schedule while the display waits::

      h(x_k) = MLP([E_tok(x_k), sum_j a_j E_ctx(x_{k-j})])        j = 1..context

  Measured against the simulated person (``benchmarks/hhat_agreement.py``) it memorized
  its context window (training r 0.97) and generalized worse than a per-token lookup.

Weights and config are saved as safetensors.
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

ESTIMATORS = ("token", "mlp")


@dataclass(frozen=True, kw_only=True)
class HHatConfig:
    """Which Ĥ, its size and its training settings."""

    estimator: str = "token"
    """``token``: each token id's value deconvolved from the delay window's spread (exact fit); ``mlp``:
    the network over the token and its previous ``context`` tokens, trained by Adam (the earlier Ĥ)."""
    shrinkage: float = 0.5
    """``token``: ridge pseudo-count: a token shown n times keeps about n / (n + shrinkage) of its value."""
    window_before: int = 3
    """``token``: tokens before a token whose value its credit may carry (a press 0.3-1.5 s after a word
    credits the 0.2-4 s before the press: at 4 tokens/s, from ~4 tokens before the word to ~15 after)."""
    window_after: int = 15
    """``token``: tokens after a token whose value its credit may carry (see ``window_before``)."""
    kernel_iterations: int = 3
    """``token``: alternating refits of the window's weights ``a_j`` (0: uniform over the window)."""
    buckets: int = 65_536
    """Token ids are taken modulo this (exact for vocabularies up to it): rows of the tables."""
    dim: int = 2
    """``mlp``: embedding width (small on purpose: credited rewards are noisy, wide embeddings overfit them)."""
    context: int = 0
    """``mlp``: previous tokens it looks at besides the token itself (8 before the ``token`` estimator:
    it memorized them; 0 generalized better)."""
    hidden: int = 16
    """``mlp``: width of the hidden layer."""
    learning_rate: float = 3e-3
    """``mlp``: Adam's learning rate."""
    batch_size: int = 256
    """``mlp``: tokens per training step, drawn from the replay buffer."""
    buffer_size: int = 200_000
    """Most tokens kept in the replay buffer (the oldest are replaced first)."""
    updates_per_feedback: int = 20
    """Training steps after each batch of feedback arrives (``token``: one refit, counted as these)."""
    seed: int = 0
    """Seeds the initial weights and the replay sampling (``mlp``)."""

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"Ĥ estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.shrinkage < 0 or self.window_before < 0 or self.window_after < 0 or self.kernel_iterations < 0:
            raise ValueError("Ĥ's shrinkage, window and kernel_iterations must be >= 0")


class TokenValues(nn.Module):
    """The ``token`` estimator: each bucket's predicted reward (row 0: padding, unused) and the window's weights."""

    def __init__(self, config: HHatConfig):
        super().__init__()
        self.config = config
        self.register_buffer("reward", torch.zeros(config.buckets + 1))  # (B + 1,) "no opinion" until fitted
        width = config.window_before + 1 + config.window_after
        self.register_buffer("kernel", torch.full((width,), 1.0 / width))  # (J,) a_j, offsets -before..after

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Predict rewards for (N, 1 + C) bucketed windows from the token alone; returns (N,)."""
        return self.reward[windows[:, 0]]

    def fit(self, buckets: np.ndarray, episodes: np.ndarray, targets: np.ndarray) -> None:
        """Fit the values and the window's weights to a replay buffer, then set every row's prediction.

        Args:
            buckets: (N,) bucket ids of the buffer's tokens (1..B), in display order.
            episodes: (N,) which episode each token belongs to (neighbours are only counted within one).
            targets: (N,) their credited rewards.
        """
        cfg = self.config
        y = targets.astype(np.float64)  # (N,)
        if not y.any():  # only silence so far: no opinion
            self.reward.zero_()
            return
        mean = y.mean()
        # compact the buffer's distinct tokens to 1..U; 0 is "no token here", its value fixed at 0
        seen, index = np.unique(buckets, return_inverse=True)
        # lay the episodes out on one line with gaps of empty slots between them, so that a window
        # never reaches into the next episode and every product with X is a convolution
        gap = max(cfg.window_before, cfg.window_after)
        first = np.diff(episodes, prepend=episodes[0] - 1) != 0  # (N,) where each episode starts
        at = np.arange(len(y)) + gap * np.cumsum(first)  # (N,) the slot of each token
        line = np.zeros(at[-1] + 1 + gap, dtype=np.int64)  # (L,) compact token index per slot
        line[at] = index + 1
        design = _Smear(line, at, cfg.window_before, cfg.window_after, len(seen) + 1)
        kernel = np.full(design.width, 1.0 / design.width)
        values = design.ridge(kernel, y - mean, cfg.shrinkage)
        for _ in range(cfg.kernel_iterations):
            spread = design.neighbour_values(values)  # (N, J): each token's neighbours' values
            gram = spread.T @ spread
            if not np.isfinite(gram).all() or np.trace(gram) <= 0:
                break
            weights = np.linalg.solve(gram + 1e-9 * np.trace(gram) * np.eye(design.width), spread.T @ (y - mean))
            if weights.sum() <= 0 or weights[cfg.window_before] <= 0:  # no consistent window: keep the last
                break
            kernel = weights / weights.sum()  # the scale lives in the values
            values = design.ridge(kernel, y - mean, cfg.shrinkage)
        own = kernel[cfg.window_before]  # a_0: the share of a token's credit that is about itself
        reward = np.full(len(self.reward), mean)  # unseen tokens: the buffer's mean credit
        reward[seen] = mean + own * values[1:]
        self.reward.copy_(torch.from_numpy(reward))
        self.kernel.copy_(torch.from_numpy(kernel))


@dataclass
class _Smear:
    """The design matrix X of the ``token`` estimator, never built: row k of ``X v`` is
    ``sum_j kernel_j v(token in slot at_k + j)``, a convolution along the line of slots."""

    line: np.ndarray
    """(L,) compact token index in each slot (0: empty)."""
    at: np.ndarray
    """(N,) the slot of each buffer token."""
    before: int
    after: int
    size: int
    """Number of values (compact indices 0..size-1)."""

    @property
    def width(self) -> int:
        return self.before + 1 + self.after

    def apply(self, values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """X v: (N,)."""
        return np.convolve(values[self.line], kernel[::-1])[self.at + self.after]

    def transpose(self, rows: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """X^T r: (size,), 0 at index 0."""
        spread = np.zeros(len(self.line))
        spread[self.at] = rows
        per_slot = np.convolve(spread, kernel)[self.before : self.before + len(self.line)]  # (L,)
        out = np.bincount(self.line, weights=per_slot, minlength=self.size)
        out[0] = 0.0
        return out

    def neighbour_values(self, values: np.ndarray) -> np.ndarray:
        """(N, J): the value of the token at each offset -before..after of each buffer token."""
        offsets = np.arange(-self.before, self.after + 1)
        return values[self.line[self.at[:, None] + offsets[None, :]]]

    def ridge(self, kernel: np.ndarray, y: np.ndarray, shrinkage: float, iterations: int = 100) -> np.ndarray:
        """min_v ||y - X v||^2 + lam ||v||^2 by conjugate gradients; (size,) values, 0 at index 0.

        ``lam`` is ``shrinkage`` times sum_j kernel_j^2, what one showing of a token adds to its
        diagonal of X^T X: a token shown n times keeps about n / (n + shrinkage) of its least-squares
        value. CG stops after ``iterations`` steps or when the residual is 1e-6 of the start's.
        """
        lam = max(shrinkage, 1e-9) * float(kernel @ kernel)  # a little ridge always: keeps the solve unique

        def normal(v: np.ndarray) -> np.ndarray:  # (X^T X + lam I) v
            out = self.transpose(self.apply(v, kernel), kernel) + lam * v
            out[0] = 0.0
            return out

        residual = self.transpose(y, kernel)
        values = np.zeros(self.size)
        direction = residual.copy()
        start = norm = float(residual @ residual)
        for _ in range(iterations):
            if norm <= 1e-12 * start:
                break
            step = normal(direction)
            alpha = norm / float(direction @ step)
            values += alpha * direction
            residual -= alpha * step
            new = float(residual @ residual)
            direction = residual + (new / norm) * direction
            norm = new
        return values


class HHatNet(nn.Module):
    """The ``mlp`` estimator: token embedding + offset-weighted bag of context embeddings → MLP → scalar."""

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
        self.optimizers: list[torch.optim.Optimizer] = []
        if config.estimator == "token":
            self.net: nn.Module = TokenValues(config)
        else:
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
        self._episodes = np.zeros(0, dtype=np.int64)  # (N,) which observed episode each token is from
        self._fitted_on: tuple[int, int] | None = None  # ``token``: (buffer length, observe count) of the last fit
        self._observed = 0
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
        windows, targets, episodes = [self._windows], [self._targets], [self._episodes]
        first = int(self._episodes[-1]) + 1 if len(self._episodes) else 0
        for n, (ids, r) in enumerate(zip(token_ids, rewards)):
            if len(ids) != len(r):
                raise ValueError(f"an episode has {len(ids)} tokens but {len(r)} rewards")
            if len(ids):
                windows.append(token_windows(ids, self.config))
                targets.append(np.asarray(r, dtype=np.float32))
                episodes.append(np.full(len(ids), first + n, dtype=np.int64))
        self._windows, self._targets = np.concatenate(windows), np.concatenate(targets)
        self._episodes = np.concatenate(episodes)
        excess = len(self._targets) - self.config.buffer_size
        if excess > 0:
            self._windows, self._targets = self._windows[excess:], self._targets[excess:]
            self._episodes = self._episodes[excess:]
        self._observed += 1
        self.presses_seen += presses

    def update(self, steps: int | None = None) -> float:
        """Train on the replay buffer; returns the mean squared error (nan if empty or no steps).

        ``mlp``: ``steps`` Adam steps on minibatches. ``token``: one fit to the whole buffer (skipped
        when nothing was observed since the last), counted as ``steps`` updates.
        """
        if not self.buffer_len:
            return math.nan
        steps = self.config.updates_per_feedback if steps is None else steps
        if self.config.estimator == "token":
            if steps <= 0:
                return math.nan
            if self._fitted_on != (self.buffer_len, self._observed):
                self.net.fit(self._windows[:, 0], self._episodes, self._targets)
                self._fitted_on = (self.buffer_len, self._observed)
            self.updates += steps
            predicted = self.net(torch.from_numpy(self._windows)).numpy()
            return float(np.mean((predicted - self._targets) ** 2))
        self.net.train()
        losses = []
        with torch.enable_grad(), _one_thread():  # reward sources run inside the rollout's no_grad
            for _ in range(steps):
                losses.append(self._step())
        return float(np.mean(losses)) if losses else math.nan

    def _step(self) -> float:
        """One Adam step (``mlp``) on a minibatch drawn from the replay buffer; returns its loss."""
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

        A file saved before the ``token`` estimator existed holds the ``mlp`` network and loads as one.

        Raises:
            ValueError: the file is not a saved Ĥ, or not one this version can read (one line, naming it).
        """
        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != "textenv-hhat":
            raise ValueError(f"{path}: not a saved Ĥ model (no textenv-hhat metadata)")
        settings = json.loads(metadata["config"])
        settings.setdefault("estimator", "mlp")  # saved before there was a choice: the network
        try:
            model = cls(HHatConfig(**settings))
            model.net.load_state_dict(load_file(str(path)))
        except (TypeError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{path}: a saved Ĥ this version cannot read ({first}); "
                             "delete it to relearn Ĥ from the feedback store") from None
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
