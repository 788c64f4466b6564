"""``textenv feedback label``: generate completions with a model and label them, without training.

Each round draws ``--num-prompts`` prompts and samples ``--candidates`` completions of each,
shown one after another: in every mode, pairs form between completions of the same prompt
(two rated differently, two whose keypress credit differs, an A/B pair, a best-of-K answer).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textenv.plugins.human.episodes import best_of_completions, compare_completions, rate_completions, select_pairs
from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.terminal import KeyReader


@dataclass
class _Session:
    """Where the labels go and where the keys come from; ``live`` is the human source of tokens mode."""

    store: FeedbackStore
    session_id: int
    reader: KeyReader
    live: Any = None


def run_labelling(args: argparse.Namespace) -> int:
    """Run labelling rounds until ``args.rounds`` are done or the person presses q.

    ``args`` are the command's (``textenv.plugins.human.cli`` has checked them).
    """
    session = _open_session(args)  # the terminal is checked before the model loads: no wait to learn it's a pipe
    try:
        with _no_progress_bars():  # transformers' "Loading weights" bars would print into the questions' screen
            labels = _label_rounds(args, session)
    finally:
        _close_session(args, session)
    print(f"\n{labels} label{'s' if labels != 1 else ''} in {args.db} (all committed as given); {_pairs_note(args.db)}")
    return 0


def _open_session(args: argparse.Namespace) -> _Session:
    if args.mode == "tokens":
        from textenv.plugins.human.live import HumanOptions, human_source

        options = HumanOptions(db=str(args.db), pace=float(args.pace), hhat_mix=0.0)
        live = human_source(options, mode="label-tokens")
        return _Session(live.store, live.session_id, live.reader, live)
    reader = KeyReader()
    store = FeedbackStore(args.db)
    session_id = store.start_session(f"label-{args.mode}", model=args.model, prompts=str(args.prompts),
                                     candidates=args.candidates)
    reader.start()
    return _Session(store, session_id, reader)


def _close_session(args: argparse.Namespace, session: _Session) -> None:
    if session.live is not None:
        session.live.close()
        return
    session.reader.close()
    session.store.end_session(session.session_id)
    session.store.close()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off while the block runs (as the ``human`` source has them during training)."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()


def _label_rounds(args: argparse.Namespace, session: _Session) -> int:
    """Generate and ask, round after round; returns the labels given."""
    from textenv.devices import default_device
    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import SamplingConfig, generate_episodes
    from textenv.models import load_causal_lm

    device = default_device()
    print(f"loading {args.model} on {device} ...", flush=True)
    model = load_causal_lm(args.model, device=device)
    if session.live is not None:  # the human source streams each batch while the env computes its rewards
        reward: Any = {"human": {"db": str(args.db), "pace": float(args.pace), "hhat_mix": 0.0}}
    else:
        reward = "length"  # not shown: the person's answers are the labels
    k = args.candidates
    env = TextGenVectorEnv(
        args.num_prompts * k, device=device, autoreset_mode="Disabled", model=args.model, prompts=args.prompts,
        reward=reward, max_new_tokens=args.max_new_tokens, chat_template=args.chat_template,
    )
    reward_model = _load_reward_model(args.reward_model) if args.mode == "compare" and args.reward_model else None
    rng = np.random.default_rng(args.seed)
    sampling = SamplingConfig(temperature=args.temperature)
    labels, round_ = 0, 0
    while not args.rounds or round_ < args.rounds:
        picks = rng.integers(len(env.task.prompts), size=args.num_prompts)
        prompts = [env.task.prompts[p] for p in picks for _ in range(k)]  # a prompt's completions side by side
        episodes = generate_episodes(model, env, sampling=sampling, seed=args.seed + round_, prompts=prompts)
        round_ += 1
        if session.live is not None:
            labels = len(session.store.keypresses(session.session_id))
            if session.live.quit:
                break
            continue
        given, quit_ = _ask(args, session, env, episodes, reward_model, rng)
        labels += given
        if quit_:
            break
    return labels


def _ask(args: argparse.Namespace, session: _Session, env, episodes, reward_model, rng) -> tuple[int, bool]:
    """One round's questions in the session's mode: (labels given, whether the person quit)."""
    store, session_id, reader = session.store, session.session_id, session.reader
    k = args.candidates
    if args.mode == "rate":
        ids = [row[: int(n)] for row, n in zip(episodes.completion_ids.tolist(), episodes.completion_mask.sum(1))]
        # each token on its own, special ones as "", as the env gives them to reward sources
        tokens = [env.task.tokenizer.batch_decode([[i] for i in row], skip_special_tokens=True) for row in ids]
        return rate_completions(store, session_id, reader, episodes.prompts, episodes.completions, ids, tokens,
                                scale=args.scale)
    if args.mode == "best":
        questions = best_of_questions(episodes.prompts, episodes.completions, k)
        return best_of_completions(store, session_id, reader, questions)
    groups = np.repeat(np.arange(args.num_prompts), k)
    if reward_model is not None:
        mean, std = reward_model.score_with_disagreement(episodes.prompts, episodes.completions)
    else:  # no ensemble: random pairs
        mean, std = rng.random(len(groups)), np.zeros(len(groups))
    pairs = [
        (i, j, d if reward_model is not None else float("nan"))  # nan: stored as "no ensemble"
        for i, j, d in select_pairs(mean, std, groups)
        if episodes.completions[i] != episodes.completions[j]
    ]
    return compare_completions(store, session_id, reader, episodes.prompts, episodes.completions, pairs, rng=rng)


def best_of_questions(prompts: Sequence[str], completions: Sequence[str], k: int) -> list[tuple[str, list[str]]]:
    """Group a round's completions, ``k`` per prompt in order, into best-of-K questions.

    A completion sampled twice is shown once (choosing between two copies says nothing); a
    prompt left with fewer than two different completions is not asked about.

    Example:
        >>> best_of_questions(["p", "p", "p", "q", "q", "q"], ["x", "y", "x", "z", "z", "z"], 3)
        [('p', ['x', 'y'])]
    """
    questions = []
    for start in range(0, len(completions), k):
        distinct = list(dict.fromkeys(completions[start : start + k]))
        if len(distinct) >= 2:
            questions.append((prompts[start], distinct))
    return questions


def _pairs_note(db: str) -> str:
    """What the store's labels give for a reward model: its pair count and the export command, or why none."""
    with FeedbackStore(db) as store:
        n = len(store.preference_pairs())
        why = "" if n else store.why_no_pairs()
    if not n:
        return f"no preference pairs yet: {why}"
    return (f"the store gives {n} preference pair{'s' if n != 1 else ''}: "
            f"`textenv feedback export --db {db} --output prefs.jsonl` writes them")


def _load_reward_model(path: str):
    from textenv.plugins.reward_model import load_reward_model

    return load_reward_model(path)
