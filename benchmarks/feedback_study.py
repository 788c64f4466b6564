"""The feedback-efficiency study: which kind of feedback trains best per person-minute (issue 18, item 1).

The task is the default one: SmolLM2-135M-Instruct continues movie-review openings (32 new
tokens); the person wants positive text and judges it with VADER. The person is simulated
(:class:`~textenv.plugins.human.simulated.SimulatedHuman` on a pseudo-terminal) and every
label goes through the real session code: the token stream of the ``human`` source, the
rate and A/B questions of :mod:`textenv.plugins.human.episodes`, the SQLite store.

Arms (each cell is one arm at one person-time budget and one seed):

* ``floor``: the untrained policy (evaluated only).
* ``reference``: PPO on the scripted critic itself (``sentiment``, VADER's compound): the ceiling.
* ``tamer``: PPO on live keypresses (``human(show=...)``): the person watches ``--show``
  completions of each batch and presses g/b while they stream; Ĥ stands in for the other
  completions, and for every completion once the budget is spent (the person presses q).
* ``tamer_no_hhat``: the same without Ĥ (``hhat_mix=0``): a token no press reached is worth 0,
  so PPO learns from the shown completions' credit alone, and nothing once the budget is spent.
* ``ratings``: the person rates completions of the untrained policy 1-5 (four per prompt);
  same-prompt completions with different ratings give preference pairs; a reward-model
  ensemble learns from them; PPO on ``reward_model(path=..., standardize=True)``.
* ``ab_active``: A/B comparisons in ``--rounds`` rounds: the first round's pairs are random,
  later ones where the ensemble trained on the answers so far disagrees most
  (:func:`~textenv.plugins.human.episodes.select_pairs`); then the reward model → PPO.
* ``ab_random``: the same with random same-prompt pairs in every round.
* ``ratings_coin`` (a control): the ratings arm with each pair's order set by a coin instead of
  the ratings: the same texts, pairs and PPO, no label. What it gains is what any trained reward
  model rewards, and the share of the other reward-model arms' gains the labels do not explain.

Budgets: the TAMER, rating and A/B arms run at each of ``--budgets`` person-minutes
(5 and 15). Every PPO run has the same budget: ``--iterations`` × ``--batch-size`` episodes
(default 8 × 64 = 512, RLOO with groups of 4, PPOConfig's other defaults: the main job's
settings), chosen so the study's 27 cells fit about 3.5 hours of one shared CPU core. Measured there
(2026-12-06, one core of two shared, ×10): floor 26 s; reference 5.1 min (PPO alone, 30-40 s an
iteration); ratings 7.5 / 9 min at 5 / 15 person-minutes; A/B 7 / 9.5 min (four reward-model
trainings of a 3-member MiniLM ensemble each, on up to ~50 pairs). 8 iterations is what fits:
the reference still gains +0.28 VADER in them (0.28 → 0.55 on seed 0).

Person-time is counted the same way in every arm: reading at ``--pace`` tokens/s (4 tokens/s,
about 3 words/s) every completion token put in front of the person, plus decision time.

* rate: the completion's tokens / pace, plus a decision delay drawn from the person's
  reaction range (``HumanModel``, 0.3-1.5 s); A/B: both completions' tokens / pace, plus the
  same decision delay. A skipped question costs its reading time too.
* TAMER: the stream's own display time, read from the store (tokens at the pace, the 0.5 s
  gap after each completion, the 1 s linger after a batch); presses are made while reading,
  so they add no time.

Prompts are not counted (a short opening, the same in every arm). Time runs ``--time-scale``
times faster than a person's (×10): the stream, reactions, credit window and answers are all
scaled; the person-minutes reported are multiplied back.

How the simulated person answers (the rule is the arm's label noise):

* TAMER: ``SimulatedHuman`` at the pseudo-terminal: each word by VADER's lexicon,
  each finished completion by its compound, 0.3-1.5 s reactions, 10 % misses, 5 % wrong keys.
* rate: ``round(3 + 2 × compound)`` clipped to 1-5; 10 % of questions skipped (a miss), 5 %
  answered with a random rating (a wrong key).
* A/B: the completion with the higher compound; a tie when they differ by under 0.05;
  10 % skipped, 5 % the other one.

Evaluation (every cell): the policy completes the held-out prompts (the last quarter of the
movie-review openings, never trained or labelled on) ``--eval-samples`` times each, with the
cell's seed as the sampling seed (so a seed's floor and its arms draw alike); the score is
the mean VADER compound, and the KL is the mean summed log-ratio policy/reference over the
sampled tokens (nats per completion, the reference being the untrained model).
The reward models' held-out accuracy is measured on pairs of held-out completions of the
untrained policy labelled by the noise-free VADER compound (|difference| >= 0.1), after each
round of the A/B arms (and once for ratings): the accuracy against comparisons.

Each cell writes ``<out>/cells/<arm>-<budget>-seed<s>.json`` as soon as it finishes, and a
rerun skips the cells already there: the study accumulates across sessions, and a killed run
loses only the cell in flight. Work files (feedback stores, reward models, the completion
pools) go to ``<out>/work/``. Run (``taskset -c 0 env OMP_NUM_THREADS=1`` on a shared machine)::

    .venv/bin/python benchmarks/feedback_study.py --quick                 # each arm once, minutes
    .venv/bin/python benchmarks/feedback_study.py --arms floor,reference --seeds 0
    .venv/bin/python benchmarks/feedback_study.py                         # every cell not yet done
    .venv/bin/python benchmarks/feedback_study.py --report                # table + plot from the cells

The table goes to ``<out>/table.md`` (and stdout), the plot to ``<out>/feedback_study.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from textenv.plugins.human.simulated import SimulatedJudge

ARMS = ("floor", "reference", "tamer", "tamer_no_hhat", "ratings", "ab_active", "ab_random", "ratings_coin")
"""Every arm, in the order the study runs them (within a seed)."""

BUDGETED = ("tamer", "tamer_no_hhat", "ratings", "ab_active", "ab_random", "ratings_coin")
"""The arms with a person in the loop, run at each person-time budget."""

CONTROLS = ("ratings_coin",)
"""Arms that test the others and never count for the goal."""

RM_ARMS = ("ratings", "ab_active", "ab_random", "ratings_coin")
"""The arms whose labels train a reward model."""

GOAL_SHARE = 0.9
"""The goal: an arm reaches this share of the reference's gain within the largest budget ..."""

GOAL_SIGMAS = 3.0
"""... with a gain over the floor larger than this many standard errors."""

TIE_GAP = 0.05
"""A/B: compounds closer than this are a tie to the person."""

HELD_OUT_GAP = 0.1
"""Held-out pairs for the reward models' accuracy: compounds at least this far apart."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class Study:
    """Everything that defines the study's cells (recorded in each cell's JSON)."""

    model: str = "smollm2-135m"
    """The policy's LM (``tiny-random`` in tests)."""
    critic: str = "vader"
    """What the person thinks: ``vader``, or ``case`` (tests: lower-case words are good)."""
    backbone: str = "all-minilm-l6-v2"
    """The reward models' backbone."""
    iterations: int = 8
    """PPO iterations per cell (every PPO arm the same)."""
    batch_size: int = 64
    """Episodes per PPO iteration."""
    group_size: int = 4
    """RLOO group: completions per prompt in a batch."""
    max_new_tokens: int = 32
    budgets: tuple[float, ...] = (5.0, 15.0)
    """Person-minutes per budgeted cell."""
    seeds: tuple[int, ...] = (0, 1, 2)
    pace: float = 4.0
    """Tokens a person reads per second."""
    time_scale: float = 10.0
    """How much faster than a person's time the sessions run."""
    show: int = 16
    """TAMER: completions of each batch streamed to the person (Ĥ scores the rest)."""
    per_prompt: int = 4
    """Completions of each training prompt in the labelling pool (rate and A/B)."""
    rounds: int = 4
    """A/B: labelling rounds, the reward model retrained after each."""
    rm_ensemble: int = 3
    """Reward-model members (the A/B arms' disagreement needs at least 2)."""
    rm_epochs: float = 6.0
    """Passes over the pairs per member (few pairs: more passes than the trainer's default)."""
    rm_pooling: str = "head"
    """How the reward models read MiniLM (``RewardModelConfig.pooling``): ``head``, its [CLS] pooler
    (how the study's cells were made, before the library's default became ``mean``), or ``mean``."""
    rm_freeze: bool = False
    """Train the reward models' head only (``RewardModelConfig.freeze_backbone``)."""
    eval_samples: int = 8
    """Completions of each held-out prompt in the evaluation."""
    max_train_prompts: int = 0
    """Use at most this many training prompts (0: all; --quick keeps few)."""

    @property
    def seconds_per_person_minute(self) -> float:
        """Wall seconds one person-minute takes at the time scale."""
        return 60.0 / self.time_scale


def quick_study(model: str, critic: str, backbone: str) -> Study:
    """Each arm once, with budgets small enough to run in minutes on one core."""
    return Study(model=model, critic=critic, backbone=backbone, iterations=1, batch_size=16, budgets=(0.5,),
                 seeds=(0,), show=4, rounds=2, rm_ensemble=2, rm_epochs=2.0, eval_samples=2,
                 max_train_prompts=8, time_scale=20.0)


@dataclass(frozen=True)
class Cell:
    """One arm at one budget and one seed."""

    arm: str
    budget: float  # person-minutes; 0 for floor and reference
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}-{self.budget:g}min-seed{self.seed}" if self.budget else f"{self.arm}-seed{self.seed}"


def cells_of(study: Study, arms: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """The cells in run order: seed by seed; within one, floor and reference first, then the A/B and
    rating arms, TAMER last (its Ĥ is the part of the library most likely to change between runs)."""
    order = ["floor", "reference", "ratings", "ab_active", "ab_random", "tamer", "tamer_no_hhat", "ratings_coin"]
    return [Cell(arm, budget, seed) for seed in seeds for arm in order if arm in arms
            for budget in (study.budgets if arm in BUDGETED else (0.0,))]


# --------------------------------------------------------------------------- the person


@dataclass(frozen=True)
class CaseCritic:
    """A consistent person for byte-level gibberish (tests): lower-case words good, others bad."""

    def word(self, word: str) -> float:
        return 0.5 if word.islower() else -0.5

    def completion(self, text: str) -> float:
        letters = [ch for ch in text if ch.isalpha()]
        return 2.0 * sum(ch.islower() for ch in letters) / len(letters) - 1.0 if letters else 0.0


def make_critic(name: str):
    """The critic :attr:`Study.critic` names."""
    from textenv.plugins.human.simulated import VaderCritic

    return {"vader": VaderCritic, "case": CaseCritic}[name]()


def reference_reward(study: Study) -> str:
    """The reward spec of the reference arm: the critic itself."""
    if study.critic == "vader":
        return "sentiment"  # VADER's compound: what the critic judges a completion by
    import textenv
    from textenv.plugin_manager import get_plugin_manager

    if "study_critic" not in get_plugin_manager().reward_sources():  # once per process: cells share it
        critic = make_critic(study.critic)
        textenv.reward(name="study_critic")(lambda completions: [critic.completion(c) for c in completions])
    return "study_critic"


def EpisodeJudge(critic: Any, pace: float, rng: np.random.Generator) -> SimulatedJudge:  # the old class name
    """How the simulated person answers rate, A/B and best-of-K questions, and what each answer costs.

    The library's :class:`~textenv.plugins.human.simulated.SimulatedJudge` with the study's
    person (``HumanModel()``'s noise and reaction range) and tie gap: the same answers from
    the same random stream as the class this study used to define, so earlier cells stay
    comparable.
    """
    from textenv.plugins.human.simulated import HumanModel, SimulatedJudge

    return SimulatedJudge(critic, pace, rng, behaviour=HumanModel(), tie_gap=TIE_GAP)


# --------------------------------------------------------------------------- completions


@dataclass(frozen=True)
class Sample:
    """A completion of the untrained policy, as the questions show it."""

    prompt: str
    text: str
    ids: list[int]
    tokens: list[str]
    group: int
    """Which prompt of the pool it answers (pairs are formed within a group)."""


def split_prompts(study: Study) -> tuple[list[str], list[str]]:
    """Training prompts (the first three quarters of the openings) and held-out ones (the rest)."""
    from textenv.prompts import load_prompts

    prompts = [p for p in load_prompts("movie-reviews") if isinstance(p, str)]
    split = len(prompts) * 3 // 4
    train = prompts[:split]
    return (train[: study.max_train_prompts] if study.max_train_prompts else train), prompts[split:]


def sample_pool(study: Study, prompts: Sequence[str], seed: int, cache: Path) -> list[Sample]:
    """``per_prompt`` completions of each prompt by the untrained policy (cached: the arms of a seed share it)."""
    if cache.exists():
        return [Sample(**s) for s in json.loads(cache.read_text())]
    import torch

    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import generate_episodes
    from textenv.models import load_causal_lm

    model = load_causal_lm(study.model)
    wanted = [(p, g) for g, p in enumerate(prompts) for _ in range(study.per_prompt)]
    rows = min(len(wanted), 48)
    env = TextGenVectorEnv(rows, model=study.model, prompts=list(prompts), reward="length",
                           max_new_tokens=study.max_new_tokens, autoreset_mode="Disabled")
    pool = []
    for start in range(0, len(wanted), rows):
        chunk = wanted[start : start + rows]
        padded = chunk + chunk[: rows - len(chunk)]  # the env's rows are fixed: repeat, then drop
        with torch.no_grad():
            episodes = generate_episodes(model, env, seed=seed * 1000 + start, prompts=[p for p, _ in padded])
        lengths = episodes.completion_mask.sum(1).tolist()
        for i, (_, group) in enumerate(chunk):
            ids = episodes.completion_ids[i, : int(lengths[i])].tolist()
            tokens = env.task.tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=True)
            pool.append(Sample(episodes.prompts[i], episodes.completions[i], ids, tokens, group))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([dataclasses.asdict(s) for s in pool]))
    return pool


def held_out_pairs(pool: Sequence[Sample], critic) -> list[Any]:
    """Same-prompt pairs of held-out completions, the one with the higher critic score chosen."""
    from textenv.plugins.reward_model import PreferencePair

    pairs = []
    for i, a in enumerate(pool):
        for b in pool[i + 1 :]:
            if a.group != b.group or a.text == b.text:
                continue
            gap = critic.completion(a.text) - critic.completion(b.text)
            if abs(gap) >= HELD_OUT_GAP:
                pairs.append(PreferencePair(a.prompt, *((a.text, b.text) if gap > 0 else (b.text, a.text))))
    return pairs


# --------------------------------------------------------------------------- labelling sessions


@contextlib.contextmanager
def question_session(study: Study, seed: int) -> Iterator[tuple[Any, Any]]:
    """A simulated person at a pty, and the key reader on its other side (the questions' terminal)."""
    from textenv.plugins.human.simulated import HumanModel, SimulatedHuman
    from textenv.plugins.human.terminal import KeyReader

    with SimulatedHuman(judge=False, behaviour=HumanModel().scaled(study.time_scale), seed=seed) as person:
        reader = KeyReader(tty_path=person.tty_path)
        reader.start()
        try:
            yield person, reader
        finally:
            reader.close()


def answer_when_asked(person, start: int, marker: str, answer, timeout: float = 60.0) -> threading.Thread:
    """Type the person's answer once a question is on their screen (never before: early keys are dropped).

    Args:
        person: the :class:`SimulatedHuman`.
        start: how much of ``person.screen`` was there before the question.
        marker: text that ends the question (its help line).
        answer: called with the question's text; returns (keys, wall seconds to wait before typing).
        timeout: seconds to wait for the question; then q, so the session never hangs.
    """

    def run() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            shown = "".join(person.screen[start:])
            if marker in shown:
                keys, delay = answer(shown)
                person.type(keys, at=time.time() + delay)
                return
            time.sleep(0.005)
        person.type("q")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def rate_session(study: Study, store, pool: Sequence[Sample], budget_s: float, judge: SimulatedJudge,
                 order: Sequence[int], seed: int) -> dict[str, Any]:
    """The person rates pool completions in ``order`` until the budget is spent; each answer stored."""
    from textenv.plugins.human.episodes import RATE_HELP, rate_completions

    session = store.start_session("rate", study="feedback_study", seed=seed)
    spent, given, asked = 0.0, 0, 0
    with question_session(study, seed) as (person, reader):
        for i in order:
            if spent >= budget_s:
                break
            s = pool[i]
            keys, seconds = judge.rate(s.text, len(s.ids))
            thread = answer_when_asked(person, len(person.screen), RATE_HELP.format(lo=1, hi=5),
                                       lambda _, k=keys, d=seconds: (k, d / study.time_scale))
            n, quit_ = rate_completions(store, session, reader, [s.prompt], [s.text], [s.ids], [s.tokens],
                                        out=reader.output())
            thread.join()
            if quit_:
                raise RuntimeError("the rating session ended early: a question was never answered")
            spent, given, asked = spent + seconds, given + n, asked + 1
    store.end_session(session)
    return {"labels": given, "questions": asked, "person_seconds": spent}


def compare_session(study: Study, store, pool: Sequence[Sample], pairs: Sequence[tuple[int, int, float]],
                    budget_s: float, judge: SimulatedJudge, seed: int) -> tuple[int, int, float]:
    """The person answers A/B questions on ``pairs`` until the budget is spent.

    Returns:
        (answers given, questions asked, person-seconds spent).
    """
    from textenv.plugins.human.episodes import COMPARE_HELP, compare_completions
    from textenv.plugins.human.stream import printable

    session = store.start_session("compare", study="feedback_study", seed=seed)
    rng = np.random.default_rng(seed)
    spent, given, asked = 0.0, 0, 0
    with question_session(study, seed) as (person, reader):
        for i, j, disagreement in pairs:
            if spent >= budget_s:
                break
            a, b = pool[i], pool[j]
            key, seconds = judge.compare(a.text, b.text, len(a.ids) + len(b.ids))

            def answer(shown: str, a=a, b=b, key=key, seconds=seconds) -> tuple[str, float]:
                # the session shows the pair in a random order: the person reads which one is A
                swapped = f"A {printable(b.text)}\n  B " in shown and f"A {printable(a.text)}\n  B " not in shown
                return ({"a": "b", "b": "a"}.get(key, key) if swapped else key), seconds / study.time_scale

            thread = answer_when_asked(person, len(person.screen), COMPARE_HELP, answer)
            n, quit_ = compare_completions(store, session, reader, [a.prompt, b.prompt], [a.text, b.text],
                                           [(0, 1, disagreement)], out=reader.output(), rng=rng)
            thread.join()
            if quit_:
                raise RuntimeError("the A/B session ended early: a question was never answered")
            spent, given, asked = spent + seconds, given + n, asked + 1
    store.end_session(session)
    return given, asked, spent


# --------------------------------------------------------------------------- reward models


def train_rm(study: Study, pairs: list[dict[str, Any]], out: Path, seed: int):
    """A reward-model ensemble on the pairs (all of them: the held-out set is the study's own)."""
    from textenv.plugins.reward_model import RewardModelConfig, train_reward_model

    config = RewardModelConfig(backbone=study.backbone, ensemble_size=study.rm_ensemble, epochs=study.rm_epochs,
                               pooling=study.rm_pooling, freeze_backbone=study.rm_freeze, batch_size=8,
                               eval_fraction=0.0, seed=seed, device="cpu")
    return train_reward_model(pairs, out, config, overwrite=True, progress=False).model


def rm_accuracy(model, held_out: list[Any]) -> float:
    """The ensemble mean's pairwise accuracy on the held-out pairs."""
    from textenv.plugins.reward_model import evaluate_reward_model

    return float(evaluate_reward_model(model, held_out)["accuracy"]) if held_out else float("nan")


def random_pairs(pool: Sequence[Sample], asked: set[tuple[int, int]], rng: np.random.Generator,
                 n: int) -> list[tuple[int, int, float]]:
    """``n`` random same-prompt pairs of different completions not asked before."""
    candidates = [(i, j) for i in range(len(pool)) for j in range(i + 1, len(pool))
                  if pool[i].group == pool[j].group and pool[i].text != pool[j].text and (i, j) not in asked]
    picks = rng.permutation(len(candidates))[:n]
    return [(*candidates[k], float("nan")) for k in picks]


def active_pairs(model, pool: Sequence[Sample], asked: set[tuple[int, int]], n: int) -> list[tuple[int, int, float]]:
    """The ``n`` new pairs the ensemble disagrees on most (at most one per prompt per round)."""
    from textenv.plugins.human.episodes import select_pairs

    mean, std = model.score_with_disagreement([s.prompt for s in pool], [s.text for s in pool])
    ranked = select_pairs(mean, std, [s.group for s in pool], per_group=len(pool))
    fresh = [(i, j, d) for i, j, d in ranked if (min(i, j), max(i, j)) not in asked and pool[i].text != pool[j].text]
    first, seen = [], set()
    for i, j, d in fresh:  # one per prompt first, so a round spreads over prompts; then the rest
        if pool[i].group not in seen:
            seen.add(pool[i].group)
            first.append((i, j, d))
    return (first + [p for p in fresh if p not in first])[:n]


# --------------------------------------------------------------------------- PPO and evaluation


def make_agent(study: Study, reward: str, seed: int, train_prompts: list[str]):
    """The PPO agent every arm trains with (the same settings everywhere)."""
    import gymnasium as gym

    import textenv  # noqa: F401  (registers the env)
    from textenv.agents import PPO

    env = gym.make("textenv/TextGen-v0", model=study.model, prompts=train_prompts, reward=reward,
                   max_new_tokens=study.max_new_tokens)
    return PPO(env, batch_size=study.batch_size, mini_batch_size=min(16, study.batch_size), advantage="rloo",
               group_size=study.group_size, seed=seed, checkpoint_every=0, progress=False, run_dir=None)


def train(agent, study: Study, log, on_iteration=None) -> list[dict[str, float]]:
    """``study.iterations`` PPO iterations; one line each."""
    history = []
    for it in range(study.iterations):
        start = time.perf_counter()
        stats = agent.train_iteration()
        history.append({k: float(v) for k, v in stats.items() if isinstance(v, (int, float))})
        extra = on_iteration(it) if on_iteration else ""
        log(f"    iter {it + 1}/{study.iterations}: reward {stats['charts/episodic_return']:+.3f} "
            f"kl {stats['objective/kl']:.2f} ({time.perf_counter() - start:.0f} s){extra}")
    return history


def evaluate(agent, study: Study, held_out: list[str], seed: int) -> dict[str, Any]:
    """The critic's mean score of the policy's completions of the held-out prompts, and its KL to the reference."""
    import torch

    from textenv.devices import autocast
    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import generate_episodes

    prompts = [p for p in held_out for _ in range(study.eval_samples)]
    env = TextGenVectorEnv(len(prompts), device=agent.device, autoreset_mode="Disabled", model=study.model,
                           prompts=held_out, reward="length", max_new_tokens=study.max_new_tokens)
    agent.policy.eval()
    with torch.no_grad(), autocast(agent.device, agent.bf16):
        episodes = generate_episodes(agent.policy.lm, env, sampling=agent.sampling, seed=seed, prompts=prompts)
    critic = make_critic(study.critic)
    scores = np.array([critic.completion(c) for c in episodes.completions])
    reference = agent.reference if agent.reference is not None else agent.policy.lm
    return {"eval_mean": float(scores.mean()), "eval_std": float(scores.std()), "eval_n": len(scores),
            "kl": completion_kl(agent, reference, episodes),
            "samples": [[p, c] for p, c in zip(episodes.prompts[:4], episodes.completions[:4])]}


def completion_kl(agent, reference, episodes, rows: int = 16) -> float:
    """Mean over completions of Σ_t log π(a_t) − log π_ref(a_t), nats (k1, as the agent logs its KL)."""
    import torch
    import torch.nn.functional as F

    from textenv.devices import autocast
    from textenv.generation import position_ids

    ids = torch.cat([episodes.prompt_ids, episodes.completion_ids], dim=1)  # (N, P + T)
    mask = torch.cat([episodes.prompt_mask, episodes.completion_mask], dim=1)  # (N, P + T)
    p, t = episodes.prompt_ids.shape[1], episodes.completion_ids.shape[1]
    total = 0.0
    for start in range(0, len(ids), rows):
        sl = slice(start, start + rows)
        position = position_ids(mask[sl])
        logp = []
        for lm in (agent.policy.lm, reference):
            with torch.no_grad(), autocast(agent.device, agent.bf16):
                logits = lm(input_ids=ids[sl], attention_mask=mask[sl], position_ids=position,
                            use_cache=False).logits[:, p - 1 : p + t - 1]  # (b, T, V): position k predicts token k+1
            logp.append(F.log_softmax(logits.float(), -1).gather(-1, episodes.completion_ids[sl, :, None])[..., 0])
        total += float(((logp[0] - logp[1]) * episodes.completion_mask[sl]).sum())
    return total / len(ids)


# --------------------------------------------------------------------------- the arms


def run_floor(study: Study, cell: Cell, ctx: dict[str, Any], log) -> dict[str, Any]:
    """The untrained policy, evaluated."""
    agent = make_agent(study, "length", cell.seed, ctx["train_prompts"])
    return {"labels": 0, "person_minutes": 0.0, **evaluate(agent, study, ctx["held_out"], cell.seed)}


def run_reference(study: Study, cell: Cell, ctx: dict[str, Any], log) -> dict[str, Any]:
    """PPO on the critic itself."""
    agent = make_agent(study, reference_reward(study), cell.seed, ctx["train_prompts"])
    history = train(agent, study, log)
    return {"labels": 0, "person_minutes": 0.0, "train_kl": history[-1]["objective/kl"],
            **evaluate(agent, study, ctx["held_out"], cell.seed)}


def run_rm_arm(study: Study, cell: Cell, ctx: dict[str, Any], log) -> dict[str, Any]:
    """Ratings or A/B labels on the untrained policy's completions → reward model → PPO."""
    from textenv.plugins.human.store import FeedbackStore

    work = ctx["work"] / cell.name
    db = work / "feedback.db"
    db.unlink(missing_ok=True)  # a cell killed in flight starts over
    pool = ctx["pool"](cell.seed)
    held_out = held_out_pairs(ctx["held_out_pool"](cell.seed), make_critic(study.critic))
    judge = EpisodeJudge(make_critic(study.critic), study.pace, np.random.default_rng(cell.seed))
    budget_s = cell.budget * 60.0
    curve: list[list[float]] = []
    rng = np.random.default_rng(cell.seed + 7)
    with FeedbackStore(db) as store:
        if cell.arm in ("ratings", "ratings_coin"):
            # prompt by prompt (its completions together, as pairs form within a prompt), prompts shuffled
            groups = rng.permutation(len({s.group for s in pool}))
            order = [i for g in groups for i, s in enumerate(pool) if s.group == g]
            labelled = rate_session(study, store, pool, budget_s, judge, order, cell.seed)
            pairs = store.preference_pairs(include_ratings=True, include_tokens=False)
            if cell.arm == "ratings_coin":  # the control: the same pairs, in an order the ratings did not set
                pairs = [p if rng.random() < 0.5 else {**p, "chosen": p["rejected"], "rejected": p["chosen"]}
                         for p in pairs]
            model = train_rm(study, pairs, work / "rm", cell.seed) if pairs else None
            if model is not None:
                curve.append([len(pairs), rm_accuracy(model, held_out)])
        else:
            labelled, model = compare_rounds(study, cell, store, pool, held_out, judge, rng, work, curve, log)
            pairs = store.preference_pairs(include_ratings=False, include_tokens=False)
    log(f"    {labelled['labels']} labels, {len(pairs)} pairs, {labelled['person_seconds'] / 60:.1f} person-min; "
        f"reward-model accuracy {curve[-1][1] if curve else float('nan'):.3f} on {len(held_out)} held-out pairs")
    result = {"labels": labelled["labels"], "questions": labelled["questions"], "pairs": len(pairs),
              "person_minutes": labelled["person_seconds"] / 60.0, "rm_accuracy": curve,
              "held_out_pairs": len(held_out)}
    if model is None:  # no usable pair: nothing to learn; the policy stays the untrained one
        agent = make_agent(study, "length", cell.seed, ctx["train_prompts"])
        return {**result, "note": "no usable pairs: untrained policy",
                **evaluate(agent, study, ctx["held_out"], cell.seed)}
    agent = make_agent(study, f"reward_model(path='{work / 'rm'}', standardize=True)", cell.seed, ctx["train_prompts"])
    history = train(agent, study, log)
    return {**result, "train_kl": history[-1]["objective/kl"], **evaluate(agent, study, ctx["held_out"], cell.seed)}


def compare_rounds(study: Study, cell: Cell, store, pool, held_out, judge, rng, work: Path, curve: list, log):
    """The A/B arms' rounds: ask a round's pairs, retrain the ensemble, measure it; the last model is the arm's."""
    asked: set[tuple[int, int]] = set()
    given = questions = 0
    spent = 0.0
    model = None
    for r in range(study.rounds):
        round_budget = cell.budget * 60.0 * (r + 1) / study.rounds - spent
        # more candidates than the round can use; the session stops at the budget
        n = max(1, int(round_budget * study.pace / (2 * study.max_new_tokens)) + 2)
        if cell.arm == "ab_active" and model is not None:
            pairs = active_pairs(model, pool, asked, n)
        else:  # the first round (no model yet), and every round of ab_random
            pairs = random_pairs(pool, asked, rng, n)
        g, q, s = compare_session(study, store, pool, pairs, round_budget, judge, cell.seed * 100 + r)
        asked |= {(min(i, j), max(i, j)) for i, j, _ in pairs[:q]}
        given, questions, spent = given + g, questions + q, spent + s
        if not q:  # the budget went in earlier rounds: nothing new to learn from
            continue
        prefs = store.preference_pairs(include_ratings=False, include_tokens=False)
        if prefs:
            model = train_rm(study, prefs, work / "rm", cell.seed)
            curve.append([len(prefs), rm_accuracy(model, held_out)])
            log(f"    round {r + 1}: {len(prefs)} pairs, held-out accuracy {curve[-1][1]:.3f}")
    return {"labels": given, "questions": questions, "person_seconds": spent}, model


def run_tamer(study: Study, cell: Cell, ctx: dict[str, Any], log) -> dict[str, Any]:
    """Live keypresses on ``show`` completions per batch, Ĥ for the rest (none for ``tamer_no_hhat``); the
    person quits at the budget."""
    from textenv.plugins.human import live
    from textenv.plugins.human.simulated import HumanModel, SimulatedHuman

    k = study.time_scale
    work = ctx["work"] / cell.name
    work.mkdir(parents=True, exist_ok=True)
    db = work / "feedback.db"
    for stale in work.glob("feedback*"):  # a cell killed in flight starts over (store and its Ĥ)
        stale.unlink()
    with SimulatedHuman(make_critic(study.critic), behaviour=HumanModel().scaled(k), seed=cell.seed) as person:
        spec = (f"human(db='{db}', tty='{person.tty_path}', pace={study.pace * k:g}, min_delay={0.2 / k:g}, "
                f"max_delay={4.0 / k:g}, gap={0.5 / k:g}, linger={1.0 / k:g}, show={study.show}"
                + (", hhat_mix=0)" if cell.arm == "tamer_no_hhat" else ")"))
        agent = make_agent(study, spec, cell.seed, ctx["train_prompts"])
        watcher = BudgetWatcher(db, cell.budget * 60.0, k, person)
        with watcher:
            history = train(agent, study, log, on_iteration=lambda it: (
                f"; {person.presses} presses, {watcher.spent() / 60:.1f} person-min"))
        presses, minutes = person.presses, watcher.spent() / 60.0
        live.close_human_sources(db)  # this cell's session ends with it: the study runs many in one process
    return {"labels": presses, "person_minutes": minutes, "train_kl": history[-1]["objective/kl"],
            "hhat": ctx["hhat_commit"], **evaluate(agent, study, ctx["held_out"], cell.seed)}


class BudgetWatcher:
    """Presses q for the person once the stream has shown them ``budget_s`` person-seconds of completions."""

    def __init__(self, db: Path, budget_s: float, scale: float, person):
        self.db, self.budget_s, self.scale, self.person = db, budget_s, scale, person
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.quit_at: float | None = None

    def __enter__(self) -> BudgetWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def spent(self) -> float:
        """Person-seconds of display so far: each shown completion from its first token to its end, scaled back."""
        if not self.db.exists():
            return 0.0
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as con:
            try:  # read only: the live source writes the store
                rows = con.execute("SELECT shown_at, hidden_at FROM episodes WHERE shown_at IS NOT NULL "
                                   "AND hidden_at IS NOT NULL").fetchall()
            except sqlite3.OperationalError:  # the schema is not written yet
                return 0.0
        return self.scale * sum(hidden - json.loads(shown)[0] for shown, hidden in rows if json.loads(shown))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if self.spent() >= self.budget_s:
                self.person.type("q")  # the person walks away: Ĥ alone from here
                self.quit_at = time.time()
                return


RUNNERS = {"floor": run_floor, "reference": run_reference, "tamer": run_tamer, "tamer_no_hhat": run_tamer,
           "ratings": run_rm_arm, "ab_active": run_rm_arm, "ab_random": run_rm_arm, "ratings_coin": run_rm_arm}


# --------------------------------------------------------------------------- running cells


def git_commit(path: str | None = None) -> str:
    """The commit the code (or one file) was last changed at, ``+dirty`` when it has uncommitted edits."""
    root = Path(__file__).resolve().parents[1]
    args = ["--", path] if path else []
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h", *args], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", *args], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_cells(study: Study, cells: Sequence[Cell], out: Path, log=print) -> list[Path]:
    """Run every cell not already in ``out/cells``; each cell's JSON is written when it ends."""
    cell_dir = out / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    train_prompts, held_out = split_prompts(study)
    pools: dict[tuple[str, int], list[Sample]] = {}

    def pool(kind: str, prompts: list[str]):
        def get(seed: int) -> list[Sample]:
            if (kind, seed) not in pools:
                name = f"pool-{kind}-{study.model}-{len(prompts)}x{study.per_prompt}-seed{seed}.json"
                pools[kind, seed] = sample_pool(study, prompts, seed + (0 if kind == "train" else 500),
                                                out / "work" / name)
            return pools[kind, seed]
        return get

    ctx = {"train_prompts": train_prompts, "held_out": held_out, "work": out / "work",
           "pool": pool("train", train_prompts), "held_out_pool": pool("held_out", held_out),
           "hhat_commit": git_commit("plugins/human/hhat.py")}
    if any(cell.arm.startswith("tamer") for cell in cells):
        log(f"Ĥ (plugins/human/hhat.py) at commit {ctx['hhat_commit']}")
    written = []
    for cell in cells:
        path = cell_dir / f"{cell.name}.json"
        if path.exists():
            if settings_differ(study, json.loads(path.read_text())["study"], cell.arm):
                raise SystemExit(f"{path} was made with other settings than {study}: use another --out")
            log(f"{cell.name}: done already ({path})")
            continue
        log(f"{cell.name}: running (load average {os.getloadavg()[0]:.2f})")
        start = time.perf_counter()
        result = RUNNERS[cell.arm](study, cell, ctx, log)
        result = {"arm": cell.arm, "budget": cell.budget, "seed": cell.seed, **result,
                  "seconds": round(time.perf_counter() - start, 1), "commit": git_commit(),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "study": dataclasses.asdict(study)}
        atomic_write(path, json.dumps(result, indent=1) + "\n")
        written.append(path)
        log(f"{cell.name}: eval {result['eval_mean']:+.3f} kl {result['kl']:.2f}, {result['labels']} labels, "
            f"{result['person_minutes']:.1f} person-min, {result['seconds']:.0f} s -> {path}")
    return written


RM_SETTINGS = {"backbone": None, "rm_ensemble": None, "rm_epochs": None, "rm_pooling": "head", "rm_freeze": False}
"""The settings only the reward-model arms depend on, with the value a cell made before the setting
existed was made with (None: it always existed)."""


def settings_differ(study: Study, recorded: dict[str, Any], arm: str) -> bool:
    """Whether a cell of ``arm`` was made with other settings (its seed and budget aside: cells differ in
    those; the reward model's aside for an arm without one)."""
    mine = dataclasses.asdict(study)
    skip = {"seeds", "budgets"} | (set() if arm in RM_ARMS else set(RM_SETTINGS))
    return any(json.dumps(mine[k]) != json.dumps(recorded.get(k, RM_SETTINGS.get(k))) for k in mine if k not in skip)


def atomic_write(path: Path, text: str) -> None:
    """Write through a temporary name: a cell file is complete or absent (a killed run leaves no half file)."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


# --------------------------------------------------------------------------- the report


def load_cells(study: Study, out: Path, log=print) -> dict[tuple[str, float, int], dict[str, Any]]:
    """Every finished cell's result made with ``study``'s settings, by (arm, budget, seed)."""
    cells, other = {}, []
    for path in sorted((out / "cells").glob("*.json")):
        r = json.loads(path.read_text())
        if settings_differ(study, r["study"], r["arm"]):
            other.append(path.name)
            continue
        cells[r["arm"], float(r["budget"]), int(r["seed"])] = r
    if other:
        log(f"left out {len(other)} cells made with other settings: {', '.join(other)}")
    return cells


def summarize(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, standard deviation (n-1) and standard error; the spread is nan below two values."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return math.nan, math.nan, math.nan
    sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return float(v.mean()), sd, sd / math.sqrt(len(v))


def table_rows(study: Study, results: dict) -> list[dict[str, Any]]:
    """One row per (arm, budget): the seeds present, their figures, the share of the reference's gain, the goal."""
    def of(arm: str, budget: float) -> list[dict]:
        return [results[arm, budget, s] for s in study.seeds if (arm, budget, s) in results]

    floor = summarize([r["eval_mean"] for r in of("floor", 0.0)])
    ref = summarize([r["eval_mean"] for r in of("reference", 0.0)])
    rows = []
    for cell in cells_of(study, ARMS, study.seeds[:1]):
        done = of(cell.arm, cell.budget)
        mean, sd, se = summarize([r["eval_mean"] for r in done])
        gain = mean - floor[0]
        gain_se = math.sqrt(se**2 + floor[2] ** 2)  # nan until both have two seeds: no spread, no test
        # a reference that gained nothing sets no scale for the share
        share = gain / (ref[0] - floor[0]) if ref[0] > floor[0] else math.nan
        minutes = float(np.mean([r["person_minutes"] for r in done])) if done else math.nan
        rows.append({
            "arm": cell.arm, "budget": cell.budget, "seeds": len(done), "labels": [r["labels"] for r in done],
            "person_minutes": minutes, "mean": mean, "sd": sd, "share": share, "gain": gain, "gain_se": gain_se,
            "kl": float(np.mean([r["kl"] for r in done])) if done else math.nan,
            "goal": (cell.arm in BUDGETED and cell.arm not in CONTROLS and len(done) == len(study.seeds)
                     and minutes <= max(study.budgets) + 0.5 and share >= GOAL_SHARE and gain > GOAL_SIGMAS * gain_se),
        })
    return rows


def _f(x: float, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown_table(study: Study, results: dict) -> str:
    """The study's table (markdown), missing cells marked, and the goal check."""
    rows = table_rows(study, results)
    n = len(study.seeds)
    lines = ["| arm | budget (person-min) | seeds | labels per seed | person-min | held-out VADER (mean ± sd) "
             "| share of ref. gain | KL (nats) |",
             "|---|---:|---:|---|---:|---|---:|---:|"]
    for r in rows:
        seeds = f"{r['seeds']}/{n}" + ("" if r["seeds"] == n else " (missing)")
        score = f"{_f(r['mean'], '+.3f')} ± {_f(r['sd'], '.3f')}" if r["seeds"] else "missing"
        lines.append(f"| {r['arm']} | {r['budget']:g} | {seeds} | {', '.join(map(str, r['labels'])) or '–'} "
                     f"| {_f(r['person_minutes'], '.1f')} | {score} | {_f(r['share'], '.0%')} | {_f(r['kl'], '.2f')} |")
    met = [r for r in rows if r["goal"]]
    lines.append("")
    lines.append(f"Goal (an arm reaches >= {GOAL_SHARE:.0%} of the reference's gain within {max(study.budgets):g} "
                 f"person-minutes, gain over the floor > {GOAL_SIGMAS:g} standard errors, all {n} seeds): "
                 + ("met by " + ", ".join(f"{r['arm']} at {r['budget']:g} min ({r['share']:.0%}, gain "
                                          f"{r['gain']:+.3f} ± {r['gain_se']:.3f})" for r in met)
                    if met else "not met"))
    best = max((r for r in rows if r["arm"] in BUDGETED and r["arm"] not in CONTROLS and r["seeds"]),
               key=lambda r: r["mean"], default=None)
    if best is not None and not met:
        lines.append(f"Closest: {best['arm']} at {best['budget']:g} min, {_f(best['share'], '.0%')} of the gain "
                     f"({best['seeds']}/{n} seeds; gain {_f(best['gain'], '+.3f')} "
                     f"± {_f(best['gain_se'], '.3f')} s.e.)")
    lines += ["", accuracy_table(study, results)]
    return "\n".join(lines)


def accuracy_curves(study: Study, results: dict) -> dict[tuple[str, float], list[tuple[float, float, int]]]:
    """Held-out reward-model accuracy against comparisons (pairs learned from), per A/B arm and budget:
    each round's (mean pairs, mean accuracy, seeds) over the seeds present."""
    curves = {}
    for arm in ("ab_active", "ab_random"):
        for budget in study.budgets:
            runs = [results[arm, budget, s]["rm_accuracy"] for s in study.seeds if (arm, budget, s) in results]
            rounds = max((len(r) for r in runs), default=0)
            curves[arm, budget] = [
                (float(np.mean([r[k][0] for r in runs if len(r) > k])),
                 float(np.mean([r[k][1] for r in runs if len(r) > k])), sum(len(r) > k for r in runs))
                for k in range(rounds)
            ]
    return curves


def accuracy_table(study: Study, results: dict) -> str:
    """Active vs random: held-out accuracy of the reward model after each round (mean over seeds)."""
    lines = ["| arm | budget | round: pairs → held-out accuracy (seeds) |", "|---|---:|---|"]
    for (arm, budget), curve in accuracy_curves(study, results).items():
        points = " · ".join(f"{n:.0f} → {acc:.3f} ({k})" for n, acc, k in curve) or "missing"
        lines.append(f"| {arm} | {budget:g} | {points} |")
    return "\n".join(lines)


def plot(study: Study, results: dict, path: Path) -> Path:
    """Held-out VADER against person-minutes per arm (floor and reference as bands), and the A/B accuracy curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(study, results)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, colour in (("floor", "grey"), ("reference", "black")):
        r = next(r for r in rows if r["arm"] == arm)
        if r["seeds"]:
            ax.axhline(r["mean"], color=colour, ls="--", label=f"{arm} ({r['seeds']} seeds)")
            if not math.isnan(r["sd"]):
                ax.axhspan(r["mean"] - r["sd"], r["mean"] + r["sd"], color=colour, alpha=0.1)
    for arm, marker in zip(BUDGETED, "osvD^x"):
        points = [r for r in rows if r["arm"] == arm and r["seeds"]]
        if points:
            ax.errorbar([r["person_minutes"] for r in points], [r["mean"] for r in points],
                        yerr=[np.nan_to_num(r["sd"]) for r in points], marker=marker, capsize=3, label=arm)
    ax.set(xlabel="person-minutes of feedback", ylabel="held-out mean VADER compound",
           title=f"{study.iterations}x{study.batch_size} PPO episodes per arm; mean ± sd over seeds")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    for (arm, budget), curve in accuracy_curves(study, results).items():
        if curve:
            ax2.plot([c[0] for c in curve], [c[1] for c in curve], marker="o",
                     ls="-" if arm == "ab_active" else ":", label=f"{arm}, {budget:g} min")
    ax2.axhline(0.5, color="grey", lw=0.8, label="chance")
    ax2.set(xlabel="preference pairs learned from", ylabel="held-out pairwise accuracy",
            title="reward model: active vs random A/B pairs")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(study: Study, out: Path, log=print) -> str:
    """Write ``table.md`` and the plot from the cells present; returns the table."""
    results = load_cells(study, out, log)
    text = markdown_table(study, results)
    (out / "table.md").write_text(text + "\n")
    plot(study, results, out / "feedback_study.png")
    log(text)
    log(f"\n{out / 'table.md'}, {out / 'feedback_study.png'}")
    return text


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each arm once, tiny budgets (into <out>/quick)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot from the cells")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {','.join(ARMS)}")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the study's 0,1,2)")
    parser.add_argument("--model", default="smollm2-135m", help="the policy (tiny-random for tests)")
    parser.add_argument("--critic", default="vader", choices=["vader", "case"])
    parser.add_argument("--backbone", default=None, help="reward-model backbone (default: MiniLM; tiny-random "
                                                         "with --model tiny-random)")
    parser.add_argument("--iterations", type=int, default=None, help="PPO iterations per cell")
    parser.add_argument("--budgets", default=None, help="person-minutes, comma-separated")
    parser.add_argument("--time-scale", type=float, default=None)
    parser.add_argument("--rm-pooling", choices=["mean", "head"], default=None,
                        help="how the reward models read MiniLM (default head: its [CLS] pooler)")
    parser.add_argument("--rm-freeze", action="store_true",
                        help="train the reward models' head only (default: the whole model)")
    parser.add_argument("--out", default="runs/feedback_study")
    return parser.parse_args(argv)


def study_from_args(args: argparse.Namespace) -> tuple[Study, Path]:
    backbone = args.backbone or ("tiny-random" if args.model == "tiny-random" else Study.backbone)
    study = (quick_study(args.model, args.critic, backbone) if args.quick
             else Study(model=args.model, critic=args.critic, backbone=backbone))
    changes: dict[str, Any] = {}
    if args.iterations:
        changes["iterations"] = args.iterations
    if args.budgets:
        changes["budgets"] = tuple(float(b) for b in args.budgets.split(","))
    if args.seeds:
        changes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.time_scale:
        changes["time_scale"] = args.time_scale
    if args.rm_pooling:
        changes["rm_pooling"] = args.rm_pooling
    if args.rm_freeze:
        changes["rm_freeze"] = True
    out = Path(args.out) / ("quick" if args.quick else "")
    return dataclasses.replace(study, **changes), out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    study, out = study_from_args(args)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        print(f"unknown arms: {', '.join(sorted(unknown))} (known: {', '.join(ARMS)})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, flush=True)  # noqa: E731  (a log that never buffers: the run is long)
    if not args.report:
        log(f"study: {study}")
        run_cells(study, cells_of(study, arms, study.seeds), out, log)
    report(study, out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
