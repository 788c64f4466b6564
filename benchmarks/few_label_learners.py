"""Reward learners that fit in seconds on frozen features, measured from few labels (issue 25).

``label_efficiency.py --learners`` runs them. Each learner is a ridge regression in closed form
(its strength chosen by leave-one-out error, so nothing is tuned on the held-out pairs) on one
frozen view of a completion:

* ``bag``: token counts (a lexicon learned from scratch: what a lexicon judge rewards);
* ``lm-embed``, ``lm-L6``, ``lm-L12``: the policy model's input embeddings, and its hidden
  states at two depths, averaged over the completion's tokens (read after the prompt);
* ``enc-embed``, ``enc-mean``: the same for the reward model's encoder (MiniLM by default);
* ``ensemble``: the mean of all of the above's standardized predictions.

The labels are the simulated person's (``SimulatedJudge``): 1-5 ratings as regression targets,
A/B answers and best-of-K answers as preference pairs (a ridge on feature differences), and
keypresses on the words the person reacts to (each token's reward regressed on its input
embedding, a completion scored by its tokens' sum; a press credited to the token it judged, the
best case for any credit assignment, or over the window before it as a session credits it).
Every figure is read against the person's own ceiling on the same held-out pairs: how often one
noisy rating, or one noisy A/B answer, agrees with the critic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ALPHAS = np.logspace(-3, 4, 15)
"""Ridge strengths tried (times the number of rows), the one with the least leave-one-out error kept."""

VIEWS = ("bag", "lm-embed", "lm-L6", "lm-L12", "enc-embed", "enc-mean")
"""The frozen views of a completion; ``ensemble`` averages a learner over all of them."""


# --------------------------------------------------------------------------- features


def completion_features(samples: Sequence[Any], model_name: str, backbone: str) -> dict[str, np.ndarray]:
    """Every view of :data:`VIEWS` for each sample (a ``feedback_study.Sample``): (N, D) float32 each."""
    import torch

    from textenv.models import load_causal_lm, load_tokenizer
    from textenv.plugins.reward_model import load_backbone

    lm, tokenizer = load_causal_lm(model_name, device="cpu").eval(), load_tokenizer(model_name)
    encoder, enc_tokenizer = load_backbone(backbone, pooling="mean")
    encoder = encoder.backbone.eval()
    views: dict[str, list[np.ndarray]] = {v: [] for v in VIEWS}
    vocab = lm.get_input_embeddings().weight.shape[0]
    with torch.no_grad():
        for s in samples:
            prompt = tokenizer(s.prompt, add_special_tokens=False)["input_ids"]
            ids = list(s.ids) or [tokenizer.eos_token_id]
            hidden = lm(input_ids=torch.tensor([prompt + ids]), output_hidden_states=True).hidden_states
            views["bag"].append(np.bincount(ids, minlength=vocab).astype(np.float32))
            views["lm-embed"].append(lm.get_input_embeddings().weight[ids].mean(0).float().numpy())
            for layer in (6, 12):
                depth = min(layer, len(hidden) - 1)  # the tiny test model has fewer layers
                views[f"lm-L{layer}"].append(hidden[depth][0, len(prompt):].mean(0).float().numpy())
            enc = enc_tokenizer(s.text or " ", return_tensors="pt", truncation=True, max_length=128)
            views["enc-embed"].append(encoder.get_input_embeddings().weight[enc["input_ids"][0]].mean(0).numpy())
            views["enc-mean"].append(encoder(**enc).last_hidden_state[0].mean(0).numpy())
    return {v: np.stack(rows).astype(np.float32) for v, rows in views.items()}


def token_embeddings(model_name: str) -> np.ndarray:
    """The policy model's input embedding table: (V, H) float32."""
    from textenv.models import load_causal_lm

    return load_causal_lm(model_name, device="cpu").get_input_embeddings().weight.detach().float().numpy()


# --------------------------------------------------------------------------- ridge


def ridge(x: np.ndarray, y: np.ndarray, *, intercept: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """A ridge regression of ``y`` (N,) on ``x`` (N, D), its strength chosen by leave-one-out error.

    Solved through whichever of the N × N and D × D problems is smaller (N is a few hundred labels, or tens of
    thousands of tokens for keypresses; D up to the vocabulary), on standardized columns, so every view is
    penalized on one scale.

    Returns:
        The fitted function: (M, D) → (M,).
    """
    mu = x.mean(0) if intercept else np.zeros(x.shape[1], dtype=x.dtype)
    sd = x.std(0) + 1e-6
    z = ((x - mu) / sd).astype(np.float64)  # (N, D)
    offset = y.mean() if intercept else 0.0
    target = y - offset
    dual = len(z) <= z.shape[1]
    eigval, eigvec = np.linalg.eigh(z @ z.T if dual else z.T @ z)  # (K,), (K, K): K = min(N, D)
    eigval = np.clip(eigval, 0.0, None)
    # in the basis of the eigenvectors, the fit is sum_k u_k s_k^2 / (s_k^2 + alpha) (u_k . y), u_k the left
    # singular vectors: the dual's eigenvectors, or z v_k / s_k in the primal
    basis = eigvec if dual else z @ eigvec  # (N, K): u_k, times s_k in the primal
    scale = np.ones_like(eigval) if dual else 1.0 / np.maximum(eigval, 1e-12)
    projected = basis.T @ target  # (K,)
    best = (np.inf, ALPHAS[0])
    for alpha in ALPHAS * len(y):
        shrink = eigval / (eigval + alpha) * scale  # (K,)
        fit = basis @ (shrink * projected)  # (N,)
        leverage = (basis**2 * shrink).sum(1)  # (N,) the hat matrix's diagonal
        error = np.mean(((target - fit) / np.maximum(1.0 - leverage, 1e-3)) ** 2)
        best = min(best, (error, alpha))
    if dual:
        weights = z.T @ (eigvec @ (projected / (eigval + best[1])))  # (D,)
    else:
        weights = eigvec @ (projected / (eigval + best[1]))  # (D,)
    return lambda rows: ((rows - mu) / sd) @ weights + offset


def pairwise_ridge(x: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A linear score from preference pairs: ridge of +1 on ``x[chosen] - x[rejected]`` and -1 on its mirror."""
    diff = x[chosen] - x[rejected]  # (P, D)
    fit = ridge(np.concatenate([diff, -diff]), np.r_[np.ones(len(diff)), -np.ones(len(diff))], intercept=False)
    return fit


def pair_accuracy(scores: np.ndarray, held_out: np.ndarray) -> float:
    """Share of held-out pairs (rows: better index, worse index) scored the right way; a tie counts one half."""
    gap = scores[held_out[:, 0]] - scores[held_out[:, 1]]
    return float(np.mean((gap > 0) + 0.5 * (gap == 0)))


def standardized(scores: np.ndarray) -> np.ndarray:
    """Scores on one scale, so that an ensemble weighs its members alike."""
    return (scores - scores.mean()) / (scores.std() + 1e-12)


# --------------------------------------------------------------------------- learners on each kind of label


def fit_views(train: dict[str, np.ndarray], held: dict[str, np.ndarray],
              fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]) -> dict[str, np.ndarray]:
    """Each view's held-out scores from ``fit(train_view)``, and the ``ensemble`` of them all."""
    scores = {v: fit(train[v])(held[v]) for v in VIEWS}
    scores["ensemble"] = np.mean([standardized(s) for s in scores.values()], axis=0)
    return scores


def rating_scores(train: dict[str, np.ndarray], held: dict[str, np.ndarray], rated: np.ndarray,
                  ratings: np.ndarray) -> dict[str, np.ndarray]:
    """Ratings as regression targets: rows ``rated`` of the training pool got ``ratings``."""
    return fit_views(train, held, lambda x: ridge(x[rated], ratings))


def pair_scores(train: dict[str, np.ndarray], held: dict[str, np.ndarray], chosen: np.ndarray,
                rejected: np.ndarray) -> dict[str, np.ndarray]:
    """Preference pairs (indices into the training pool) as a pairwise linear model."""
    return fit_views(train, held, lambda x: pairwise_ridge(x, chosen, rejected))


def press_scores(embeddings: np.ndarray, shown_ids: Sequence[Sequence[int]], presses: Sequence[Sequence[float]],
                 held_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Keypresses as per-token rewards: each shown token's press (+1, -1, or 0 for none) regressed on its input
    embedding; a held-out completion scores the sum over its tokens (what Ĥ does, with a shared linear head)."""
    tokens = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in shown_ids])
    fit = ridge(embeddings[tokens], np.concatenate([np.asarray(p, dtype=np.float64) for p in presses]))
    return np.array([fit(embeddings[np.asarray(ids or [0])]).sum() for ids in held_ids])
