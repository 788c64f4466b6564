"""Ĥ measured: its held-out agreement with the simulated person against the presses it learned from.

Ĥ (:class:`~textenv.plugins.human.hhat.HumanRewardModel`) stands in for the person on the
tokens nobody pressed for. This script measures how well it does that as a function of how
many keypresses it has learned from, on completions it never saw a press on.

What is real and what is simulated:

* **Real**: the completions (sampled once from the default model, SmolLM2-135M-Instruct, on
  the movie-review openings, 32 new tokens, temperature 1; cached under ``--cache``); the
  live token-mode session (:class:`~textenv.plugins.human.stream.TokenFeedback`: the stream
  at a reading pace through a pseudo-terminal, the key reader, the SQLite store, the press
  marks); the credit of each press to the tokens shown 0.2-4 s before it
  (:mod:`~textenv.plugins.human.credit`, Deep TAMER's uniform delay); Ĥ, trained as the live
  ``human`` source trains it (after each batch on which the person pressed: ``observe`` the
  shown completions' credited rewards, then ``update()``).
* **Simulated**: the person, :class:`~textenv.plugins.human.simulated.SimulatedHuman` on the
  pty's master side: it reads the stream, judges each word with VADER's lexicon (valence / 4,
  reacting from |valence| >= 1) and each finished completion with VADER's compound score
  (from |compound| >= 0.3), and presses g/b with a strength digit 0.3-1.5 s later, missing
  10 % of its judgements and pressing the wrong key for 5 %. Time runs ``--time-scale`` times
  faster than a person's: the stream, the reactions, the credit window, gaps all scaled.
* **Emulated**: Ĥ's idle training. The live source also trains Ĥ one step every 0.25 s while
  its display waits, about one step per token at 4 tokens/s; at 10x the waits between tokens
  (25 ms) are under the display's 30 ms floor for it, so a 10x live session runs about one
  idle step per completion instead of 32. Here each batch's share is run before that batch's
  feedback is learned (``display seconds / 0.25`` steps on what Ĥ had), as a person-paced
  session would have run them; ``--no-idle-training`` leaves them out (only the 20 steps after
  each batch: about what the 10x sessions of ``feedback_study.py`` train). Both matter to
  the ``mlp`` estimator only: the default ``token`` estimator refits exactly when feedback
  arrives, so steps without new feedback change nothing.

Person-time counts the training stream only, at the stated reading pace: each completion's
tokens at ``--pace`` tokens/s (4: about 3 words/s) plus the 0.5 s gap after it, plus the 1 s
the display lingers after each batch for late keys. Deciding adds no time: in token mode the
person presses while reading, and the stream does not wait for them.

Held out: completions of other prompts (the last quarter of the movie-review openings), which
Ĥ never saw presses on. The same person (another noise seed) watches them once per seed, so
their presses are credited exactly as training presses are; Ĥ never learns from them.
Metrics, at each checkpoint (the first batch end at or past each press count):

* ``r word``: Pearson correlation, over every held-out token, between Ĥ's prediction and the
  person's judgement of the token (:func:`~textenv.plugins.human.simulated.token_judgements`:
  the VADER score of the word it is part of, where the person reacts to it; 0 elsewhere). For
  scale, printed below the tables: how far the person's own held-out credit correlates with
  their judgements (the delay window spreads each press over the 4 s before it, a 0.3-1.5 s
  reaction's cause among them);
* ``r credit``: the same against the held-out credited reward (the noisy target Ĥ regresses);
* ``sign``: sign accuracy on the held-out tokens some press was credited to (mass > 0,
  reward != 0): the sign of Ĥ's prediction against the credited reward's (as the live batch
  summary judges Ĥ);
* ``r compl``: Pearson correlation, over held-out completions, between the sum of Ĥ's
  predictions (what a policy trained on Ĥ alone would get for it) and its VADER compound.

Baselines, from the same training presses: ``const`` predicts the training tokens' mean
credited reward everywhere (its correlations are undefined; its sign accuracy is the share of
pressed tokens with that mean's sign), ``lookup`` predicts each token id's mean credited
reward in training (the mean for ids never seen; an id seen but never credited predicts 0, which
counts as a miss in ``sign``).

The figures are not bit-reproducible: when a press arrives, and so its credit, depends on the
threads' scheduling on a busy machine (timings in milliseconds at 10x); the spread over seeds
covers that too. Run (``OMP_NUM_THREADS=1 taskset -c 1`` on a shared machine)::

    .venv/bin/python benchmarks/hhat_agreement.py                # 3 seeds, up to 400 presses
    .venv/bin/python benchmarks/hhat_agreement.py --quick        # under a minute, tiny-random

Choosing Ĥ's settings: the simulated person never looks at Ĥ, so a session's presses can be
saved once and other Ĥ configurations trained on them afterwards, exactly as the live session
would have trained them (same batches, same steps), in seconds each::

    .venv/bin/python benchmarks/hhat_agreement.py --save runs/hhat          # the sessions, once
    .venv/bin/python benchmarks/hhat_agreement.py --refit runs/hhat --variant default \
        --variant old:estimator=mlp,context=8 --variant k5:shrinkage=5   # HHatConfig overrides
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from textenv.plugins.human.credit import UniformDelay
from textenv.plugins.human.hhat import HHatConfig, HumanRewardModel
from textenv.plugins.human.live import HumanOptions
from textenv.plugins.human.simulated import Critic, HumanModel, SimulatedHuman, VaderCritic, token_judgements
from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.stream import StreamConfig, StreamResult, TokenFeedback
from textenv.plugins.human.terminal import KeyReader

HHAT_INTERVAL = HumanOptions().hhat_interval
"""Seconds between the live source's idle training steps while its display waits."""


@dataclass(frozen=True, kw_only=True)
class Study:
    """What one run of the benchmark measures."""

    model: str = "smollm2-135m"
    """The LM whose completions the person watches."""
    critic: str = "vader"
    """What the person thinks: ``vader`` (words by lexicon, completions by compound), or ``case``
    (a word in lower case is good, any other bad: gibberish from ``tiny-random`` has words of that kind)."""
    presses: tuple[int, ...] = (25, 50, 100, 200, 400)
    """Checkpoints: Ĥ is measured when it has learned from this many presses."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Each seed: the order of the training completions, the person's noise, Ĥ's initial weights."""
    pool: int = 320
    """Training completions sampled (each seed watches them in its own order until the last checkpoint)."""
    held_out: int = 64
    """Held-out completions (of other prompts)."""
    batch: int = 8
    """Completions per streamed batch; Ĥ learns after each, as the live source does after each reward call."""
    max_new_tokens: int = 32
    """Tokens per completion."""
    pace: float = 4.0
    """Tokens per second a person reads at."""
    time_scale: float = 10.0
    """How much faster than a person's time the session runs."""
    sample_seed: int = 0
    """Seeds the sampling of the completions."""
    idle_training: bool = True
    """Run the idle steps a person-paced live session gives Ĥ while each batch is on screen (False: only
    the steps after each batch, about what a live session at 10x speed runs)."""

    @property
    def person_seconds_per_batch(self) -> float:
        """The display's fixed person-time per batch besides the tokens: the gaps and the final linger."""
        cfg = StreamConfig()
        return cfg.linger + cfg.gap * (self.batch - 1)


@dataclass(frozen=True)
class Completion:
    """One sampled completion, as the display shows it."""

    prompt: str
    text: str
    ids: list[int]
    tokens: list[str]
    """Each token decoded on its own (what the reward context and the display give)."""


@dataclass
class HeldOut:
    """The held-out completions and what the person made of them (never shown to Ĥ)."""

    completions: list[Completion]
    judgements: list[np.ndarray]
    """Per completion, (T,) the person's judgement of each token."""
    rewards: list[np.ndarray]
    """Per completion, (T,) the credited reward of the person's presses on it."""
    masses: list[np.ndarray]
    """Per completion, (T,) the summed credit weight of each token."""
    scores: np.ndarray
    """(N,) each completion's judgement as a whole (VADER's compound)."""
    presses: int

    @property
    def credit_vs_judgement(self) -> float:
        """Pearson's r between the person's own credited reward and their judgement, per held-out token.

        The reference for Ĥ's ``r word``: Ĥ learns credit, which the delay window spreads over
        the tokens shown up to 4 s before each press, so even the person's own credit tracks
        their per-token judgement only this far.
        """
        return pearson(np.concatenate(self.rewards), np.concatenate(self.judgements))


@dataclass
class Checkpoint:
    """Ĥ and the baselines measured once, on the held-out completions."""

    seed: int
    target: int
    presses: int
    """Presses Ĥ had learned from (its ``presses_seen``)."""
    person_minutes: float
    completions: int
    """Training completions watched so far."""
    hhat: dict[str, float]
    const: dict[str, float]
    lookup: dict[str, float]
    judged_tokens: int
    """Held-out tokens the sign accuracy is over."""


@dataclass
class SeedRun:
    """One seed's checkpoints and which completions it trained on."""

    seed: int
    checkpoints: list[Checkpoint]
    trained_on: list[int]
    """Indices into the training pool of the completions Ĥ learned from, in order."""
    held_out: HeldOut = field(repr=False)
    hhat: HumanRewardModel = field(repr=False)


# --------------------------------------------------------------------------- completions


def sample_completions(study: Study, cache: Path | None) -> tuple[list[Completion], list[Completion]]:
    """The training pool and the held-out completions, sampled once (then read from ``cache``).

    Training completions continue the first three quarters of the movie-review openings, the
    held-out ones the last quarter; both with the default sampling (temperature 1, no top-k/p).
    """
    path = None
    if cache is not None:
        key = f"{study.model}-{study.pool}-{study.held_out}-{study.max_new_tokens}-{study.sample_seed}"
        path = cache / f"completions-{key}.json"
        if path.exists():
            data = json.loads(path.read_text())
            return [Completion(**c) for c in data["train"]], [Completion(**c) for c in data["held_out"]]
    import torch

    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import generate_episodes
    from textenv.models import load_causal_lm
    from textenv.prompts import load_prompts

    prompts = [p for p in load_prompts("movie-reviews") if isinstance(p, str)]
    split = len(prompts) * 3 // 4
    model = load_causal_lm(study.model)
    rows = 32

    def sample(pool: list[str], n: int, seed: int) -> list[Completion]:
        out = []
        env = TextGenVectorEnv(rows, model=study.model, prompts=pool, reward="length",
                               max_new_tokens=study.max_new_tokens, autoreset_mode="Disabled")
        tokenizer = env.task.tokenizer
        for start in range(0, n, rows):
            chosen = [pool[(start + i) % len(pool)] for i in range(rows)]
            with torch.no_grad():
                episodes = generate_episodes(model, env, seed=seed + start, prompts=chosen)
            lengths = episodes.completion_mask.sum(1).tolist()
            for i in range(min(rows, n - start)):
                ids = episodes.completion_ids[i, : int(lengths[i])].tolist()
                # each token decoded on its own, as the env gives them to a reward source
                tokens = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=True)
                out.append(Completion(episodes.prompts[i], episodes.completions[i], ids, tokens))
            print(f"  sampled {len(out)}/{n} completions", flush=True)
        return out

    train = sample(prompts[:split], study.pool, study.sample_seed)
    held_out = sample(prompts[split:], study.held_out, study.sample_seed + 1_000_000)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"train": [asdict(c) for c in train], "held_out": [asdict(c) for c in held_out]}))
    return train, held_out


# --------------------------------------------------------------------------- the person


@dataclass(frozen=True)
class CaseCritic:
    """A consistent scripted person for byte-level gibberish: a word in lower case is good, any other bad."""

    def word(self, word: str) -> float:
        return 0.5 if word.islower() else -0.5

    def completion(self, text: str) -> float:
        return 0.0


def make_critic(name: str) -> Critic:
    """The critic named by :attr:`Study.critic`."""
    return {"vader": VaderCritic, "case": CaseCritic}[name]()


@contextlib.contextmanager
def watching(study: Study, critic: Critic, seed: int) -> Iterator[TokenFeedback]:
    """A live token-feedback session with the simulated person at its pseudo-terminal, time scaled."""
    k = study.time_scale
    base = StreamConfig()
    config = StreamConfig(pace=study.pace * k, delay=UniformDelay().scaled(k), gap=base.gap / k,
                          linger=base.linger / k)
    with (tempfile.TemporaryDirectory() as tmp, FeedbackStore(Path(tmp) / "feedback.db") as store,
          SimulatedHuman(critic, behaviour=HumanModel().scaled(k), seed=seed) as person):
        reader = KeyReader(tty_path=person.tty_path)
        feedback = TokenFeedback(store, store.start_session("benchmark", seed=seed), config=config, reader=reader)
        reader.start()
        try:
            yield feedback
        finally:
            reader.close()


def show(feedback: TokenFeedback, batch: Sequence[Completion]) -> StreamResult:
    """Stream a batch of completions to the person; their presses come back credited."""
    return feedback.stream([c.prompt for c in batch], [c.text for c in batch], [c.ids for c in batch],
                           [c.tokens for c in batch])


def watch_held_out(study: Study, completions: list[Completion], critic: Critic, seed: int) -> HeldOut:
    """The person watches the held-out completions once; their presses are credited, never learned."""
    rewards, masses, presses = [], [], 0
    with watching(study, critic, seed) as feedback:
        for start in range(0, len(completions), study.batch):
            result = show(feedback, completions[start : start + study.batch])
            rewards += result.rewards
            masses += result.masses
            presses += len(result.presses)
    return HeldOut(completions, [token_judgements(c.tokens, critic) for c in completions], rewards, masses,
                   np.array([critic.completion(c.text) for c in completions]), presses)


# --------------------------------------------------------------------------- metrics


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; nan when either side is constant (no correlation is defined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def agreement(predicted: Sequence[np.ndarray], held_out: HeldOut) -> dict[str, float]:
    """Per-token predictions for the held-out completions, against the person.

    Returns:
        ``r_word``, ``r_credit``, ``sign`` (accuracy on pressed tokens) and ``r_completion``; see
        the module docstring.
    """
    flat = np.concatenate(predicted)  # (K,) every held-out token
    rewards, masses = np.concatenate(held_out.rewards), np.concatenate(held_out.masses)
    pressed = (masses > 0) & (rewards != 0)  # tokens some press was credited to, as the live summary counts them
    return {
        "r_word": pearson(flat, np.concatenate(held_out.judgements)),
        "r_credit": pearson(flat, rewards),
        "sign": float(np.mean(np.sign(flat[pressed]) == np.sign(rewards[pressed]))) if pressed.any() else math.nan,
        "r_completion": pearson(np.array([p.sum() for p in predicted]), held_out.scores),
    }


def baselines(trained: list[tuple[list[int], np.ndarray]], held_out: HeldOut) -> tuple[dict, dict]:
    """The constant (training mean) and per-token-id lookup baselines, from what Ĥ learned from."""
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in trained])
    targets = np.concatenate([r for _, r in trained])
    mean = float(targets.mean())
    sums, counts = {}, {}
    for token, target in zip(ids.tolist(), targets.tolist()):
        sums[token] = sums.get(token, 0.0) + target
        counts[token] = counts.get(token, 0) + 1
    lookup = [np.array([sums[t] / counts[t] if t in counts else mean for t in c.ids]) for c in held_out.completions]
    return agreement([np.full(len(c.ids), mean) for c in held_out.completions], held_out), agreement(lookup, held_out)


# --------------------------------------------------------------------------- the study


@dataclass
class Batch:
    """One streamed batch of training completions and the person's credited presses on it."""

    completions: list[int]
    """Indices into the training pool of the completions streamed."""
    shown: list[int]
    """Indices into ``completions`` of those the person saw whole (the ones Ĥ learns from)."""
    rewards: list[list[float]]
    """Per shown completion, the credited reward of each token."""
    presses: int
    attentive: bool
    """Whether the person gave feedback on this batch (the live source learns only then)."""
    display: float
    """Person-seconds the batch was on screen."""


def stream_seed(study: Study, train: list[Completion], critic: Critic, seed: int) -> list[Batch]:
    """One seed's live session: the person watches training completions in the seed's order until
    their presses on attentive batches reach the last checkpoint."""
    order = np.random.default_rng(seed).permutation(len(train)).tolist()
    batches: list[Batch] = []
    learned = 0
    with watching(study, critic, seed) as feedback:
        for start in range(0, len(order), study.batch):
            if learned >= max(study.presses):
                break
            chosen = order[start : start + study.batch]
            result = show(feedback, [train[i] for i in chosen])
            display = sum(len(train[i].ids) for i in chosen) / study.pace + study.person_seconds_per_batch
            batches.append(Batch(chosen, list(result.shown), [result.rewards[j].tolist() for j in result.shown],
                                 len(result.presses), bool(result.attentive), display))
            learned += len(result.presses) if result.attentive else 0
    return batches


def replay(study: Study, train_ids: Sequence[Sequence[int]], batches: Sequence[Batch], held_out: HeldOut,
           config: HHatConfig, seed: int) -> SeedRun:
    """Ĥ learns a seed's batches as the live source does, and is measured at each checkpoint.

    The simulated person does not look at Ĥ, so training Ĥ after the session gives what training it
    between the batches would: the same presses, the same steps in the same order. That lets
    ``--refit`` train other Ĥ configurations on the presses of a saved session in seconds.
    """
    hhat = HumanRewardModel(replace(config, seed=seed))
    targets = sorted(study.presses)
    checkpoints: list[Checkpoint] = []
    trained: list[tuple[list[int], np.ndarray]] = []
    trained_on: list[int] = []
    watched, person_seconds = 0, 0.0
    for batch in batches:
        if not targets:
            break
        watched += len(batch.completions)
        person_seconds += batch.display
        # the idle steps a person-paced session runs while this batch is on screen, before its feedback
        if hhat.buffer_len and study.idle_training:
            hhat.update(round(batch.display / HHAT_INTERVAL))
        if batch.attentive:  # as the live source: learn the shown completions' credit, then a few steps
            shown = [batch.completions[j] for j in batch.shown]
            rewards = [np.asarray(r, dtype=np.float32) for r in batch.rewards]
            hhat.observe([train_ids[i] for i in shown], rewards, presses=batch.presses)
            hhat.update()
            trained += [(list(train_ids[i]), r) for i, r in zip(shown, rewards)]
            trained_on += shown
        while targets and hhat.presses_seen >= targets[0]:
            const, lookup = baselines(trained, held_out)
            rewards, masses = np.concatenate(held_out.rewards), np.concatenate(held_out.masses)
            checkpoints.append(Checkpoint(
                seed=seed, target=targets.pop(0), presses=hhat.presses_seen,
                person_minutes=person_seconds / 60, completions=watched,
                hhat=agreement(hhat.predict([c.ids for c in held_out.completions]), held_out),
                const=const, lookup=lookup, judged_tokens=int(np.sum((masses > 0) & (rewards != 0))),
            ))
    return SeedRun(seed, checkpoints, trained_on, held_out, hhat)


def run_seed(study: Study, train: list[Completion], held_out: HeldOut, critic: Critic, seed: int,
             config: HHatConfig | None = None, save: Path | None = None) -> SeedRun:
    """One seed: the person watches training completions in the seed's order; Ĥ learns from the
    presses batch by batch and is measured at each checkpoint. ``save``: also write the session's
    presses and the held-out set there (``seed<N>.json``) for ``--refit``."""
    batches = stream_seed(study, train, critic, seed)
    if save is not None:
        save_session(save / f"seed{seed}.json", study, train, batches, held_out, seed)
    return replay(study, [c.ids for c in train], batches, held_out, config or HHatConfig(), seed)


# --------------------------------------------------------------------------- saved sessions, refits


def save_session(path: Path, study: Study, train: list[Completion], batches: list[Batch], held_out: HeldOut,
                 seed: int) -> None:
    """Write what Ĥ learns from and is measured on in one seed's session, for ``--refit``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "study": asdict(study), "seed": seed, "train_ids": [c.ids for c in train],
        "batches": [asdict(b) for b in batches],
        "held_out": {"ids": [c.ids for c in held_out.completions],
                     "judgements": [j.tolist() for j in held_out.judgements],
                     "rewards": [r.tolist() for r in held_out.rewards],
                     "masses": [m.tolist() for m in held_out.masses],
                     "scores": held_out.scores.tolist(), "presses": held_out.presses},
    }))


def load_session(path: Path) -> tuple[Study, int, list[list[int]], list[Batch], HeldOut]:
    """What :func:`save_session` wrote: the study, the seed, the training pool's ids, the batches, the held-out set."""
    data = json.loads(path.read_text())
    study = Study(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["study"].items()})
    h = data["held_out"]
    held_out = HeldOut([Completion("", "", ids, []) for ids in h["ids"]],
                       [np.asarray(j) for j in h["judgements"]], [np.asarray(r) for r in h["rewards"]],
                       [np.asarray(m) for m in h["masses"]], np.asarray(h["scores"]), h["presses"])
    return study, data["seed"], data["train_ids"], [Batch(**b) for b in data["batches"]], held_out


def parse_variant(text: str) -> tuple[str, HHatConfig]:
    """``name:key=value,key=value`` (or just the overrides, or ``default``) → a named HHatConfig."""
    name, _, overrides = text.rpartition(":") if ":" in text else (text, "", text)
    config = HHatConfig()
    if overrides and overrides != "default":
        types = {k: type(v) for k, v in asdict(config).items()}
        values = dict(item.split("=", 1) for item in overrides.split(","))
        config = replace(config, **{k: types[k](v) if types[k] is not bool else v.lower() in ("1", "true")
                                    for k, v in values.items()})
    return name, config


def refit(directory: Path, variants: Sequence[str], log=print) -> dict[str, list[SeedRun]]:
    """Train each Ĥ variant on every saved session in ``directory`` and print one line per checkpoint."""
    sessions = [load_session(p) for p in sorted(directory.glob("seed*.json"))]
    if not sessions:
        raise SystemExit(f"{directory}: no saved sessions (seed*.json); run with --save {directory} first")
    results = {}
    log(f"{len(sessions)} sessions (seeds {', '.join(str(s[1]) for s in sessions)}); mean ± std over them")
    log(f"{'variant':<28} {'presses':>7} {'r word':>11} {'r credit':>11} {'sign':>8} {'r compl':>11} "
        f"| {'lookup r':>10} {'lookup sign':>11} {'const sign':>10} {'s':>5}")
    for text in variants:
        name, config = parse_variant(text)
        start = time.perf_counter()
        runs = [replay(study, ids, batches, held_out, config, seed) for study, seed, ids, batches, held_out in sessions]
        seconds = time.perf_counter() - start
        results[name] = runs
        for target in sorted({c.target for r in runs for c in r.checkpoints}):
            at = [c for r in runs for c in r.checkpoints if c.target == target]
            figures = [("r_word", 11, False), ("r_credit", 11, False), ("sign", 8, True), ("r_completion", 11, False)]
            line = " ".join(f"{_fmt([c.hhat[k] for c in at], True, share):>{w}}" for k, w, share in figures)
            log(f"{name:<28} {target:>7} {line} | {_fmt([c.lookup['r_word'] for c in at], True):>10} "
                f"{_fmt([c.lookup['sign'] for c in at], True, True):>11} "
                f"{_fmt([c.const['sign'] for c in at], True, True):>10} {seconds / len(runs):>5.1f}", flush=True)
    return results


def run_study(study: Study, *, cache: Path | None = None, save: Path | None = None, log=print) -> list[SeedRun]:
    """Sample (or load) the completions, then run every seed; returns their checkpoints."""
    train, held_out_completions = sample_completions(study, cache)
    critic = make_critic(study.critic)
    runs = []
    for seed in study.seeds:
        start = time.perf_counter()
        # the held-out presses come from the same person with other noise (its own seed), never learned
        held_out = watch_held_out(study, held_out_completions, critic, seed + 10_000)
        run = run_seed(study, train, held_out, critic, seed, save=save)
        runs.append(run)
        last = run.checkpoints[-1] if run.checkpoints else None
        log(f"seed {seed}: {held_out.presses} held-out presses (their credit vs the person's judgements: "
            f"r {held_out.credit_vs_judgement:+.2f}); {len(run.trained_on)} training completions, "
            f"{last.presses if last else 0} presses, {last.person_minutes if last else 0:.1f} person-minutes; "
            f"{time.perf_counter() - start:.0f} s", flush=True)
    return runs


# --------------------------------------------------------------------------- report


def _fmt(values: Sequence[float], spread: bool, percent: bool = False) -> str:
    """Mean (± sample std when ``spread``) of the defined values; ``—`` when none is."""
    values = [100 * v if percent else v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    mean = f"{np.mean(values):.0f}%" if percent else f"{np.mean(values):+.2f}"
    if not spread or len(values) < 2:
        return mean
    return f"{mean}±{np.std(values, ddof=1):.0f}" if percent else f"{mean}±{np.std(values, ddof=1):.2f}"


def table(runs: list[SeedRun], seed: int | None = None) -> str:
    """The checkpoints as a table: one seed's, or the mean ± std over seeds."""
    rows = [c for r in runs for c in r.checkpoints if seed is None or c.seed == seed]
    spread = seed is None
    columns = [  # (heading, width, the figure of a checkpoint, whether a share)
        ("r word", 11, lambda c: c.hhat["r_word"], False),
        ("r credit", 11, lambda c: c.hhat["r_credit"], False),
        ("sign", 8, lambda c: c.hhat["sign"], True),
        ("r compl", 11, lambda c: c.hhat["r_completion"], False),
        ("| lookup r", 12, lambda c: c.lookup["r_word"], False),
        ("lookup sign", 11, lambda c: c.lookup["sign"], True),
        ("const sign", 10, lambda c: c.const["sign"], True),
    ]
    header = f"{'presses':>7} {'seeds':>5} {'learned':>7} {'person-min':>10} {'tokens':>6} " + " ".join(
        f"{name:>{width}}" for name, width, _, _ in columns)
    lines = [header, "-" * len(header)]
    for target in sorted({c.target for c in rows}):
        at = [c for c in rows if c.target == target]
        figures = " ".join(
            f"{('| ' if name.startswith('|') else '') + _fmt([get(c) for c in at], spread, share):>{width}}"
            for name, width, get, share in columns)
        lines.append(f"{target:>7} {len(at):>5} {np.mean([c.presses for c in at]):>7.0f} "
                     f"{np.mean([c.person_minutes for c in at]):>10.1f} {np.mean([c.judged_tokens for c in at]):>6.0f} "
                     + figures)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny-random, the case critic, 2 seeds, up to 100 presses, time x40: under a minute")
    parser.add_argument("--model", help="smollm2-135m (tiny-random with --quick)")
    parser.add_argument("--critic", choices=["vader", "case"], help="vader (case with --quick)")
    parser.add_argument("--presses", type=int, nargs="+", help="checkpoints (25 50 100 200 400)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (0 1 2)")
    parser.add_argument("--pool", type=int, help="training completions sampled (320)")
    parser.add_argument("--held-out", type=int, help="held-out completions (64)")
    parser.add_argument("--batch", type=int, help="completions per streamed batch (8)")
    parser.add_argument("--time-scale", type=float, help="how much faster than a person's time (10; 40 with --quick)")
    parser.add_argument("--pace", type=float, help="tokens per second a person reads at (4)")
    parser.add_argument("--no-idle-training", action="store_true",
                        help="train Ĥ only after each batch, not also as a person-paced session does while it "
                             "waits (about what a 10x live session runs)")
    parser.add_argument("--cache", default="runs/hhat_agreement", help="where the sampled completions are kept")
    parser.add_argument("--json", help="also write every checkpoint to this file")
    parser.add_argument("--save", metavar="DIR",
                        help="also write each seed's presses and held-out set to DIR/seed<N>.json, for --refit")
    parser.add_argument("--refit", metavar="DIR",
                        help="no session: train Ĥ variants on the sessions saved in DIR (seconds each), print a table")
    parser.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE,...",
                        help="with --refit: an HHatConfig to train (repeatable; 'default' is today's defaults)")
    args = parser.parse_args()
    if args.refit:
        refit(Path(args.refit), args.variant or ["default"])
        return

    study = Study()
    if args.quick:
        study = replace(study, model="tiny-random", critic="case", presses=(25, 50, 100), seeds=(0, 1), pool=96,
                        held_out=16, time_scale=40.0)
    overrides = {"model": args.model, "critic": args.critic, "pool": args.pool, "held_out": args.held_out,
                 "batch": args.batch, "time_scale": args.time_scale, "pace": args.pace,
                 "presses": tuple(args.presses) if args.presses else None,
                 "seeds": tuple(args.seeds) if args.seeds else None,
                 "idle_training": False if args.no_idle_training else None}
    study = replace(study, **{k: v for k, v in overrides.items() if v is not None})
    print(f"load average {os.getloadavg()[0]:.2f}; {study}", flush=True)
    start = time.perf_counter()
    runs = run_study(study, cache=Path(args.cache) if args.cache else None,
                     save=Path(args.save) if args.save else None)
    print(f"\nseed {study.seeds[0]} alone:\n{table(runs, study.seeds[0])}")
    print(f"\nmean ± std over seeds {', '.join(map(str, study.seeds))}:\n{table(runs)}")
    print("reference for r word: the person's own held-out credit against their judgements, r "
          f"{_fmt([r.held_out.credit_vs_judgement for r in runs], spread=True)}")
    print(f"\n{time.perf_counter() - start:.0f} s wall in all")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "study": asdict(study),
            "held_out": [{"seed": r.seed, "presses": r.held_out.presses,
                          "credit_vs_judgement": r.held_out.credit_vs_judgement} for r in runs],
            "checkpoints": [asdict(c) for r in runs for c in r.checkpoints],
        }, indent=1))


if __name__ == "__main__":
    main()
