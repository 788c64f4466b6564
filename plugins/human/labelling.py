"""``textenv feedback label``: generate completions with a model and label them, without training."""

from __future__ import annotations

import argparse

import numpy as np

from textenv.plugins.human.episodes import compare_completions, rate_completions, select_pairs
from textenv.plugins.human.live import HumanOptions, human_source
from textenv.plugins.human.store import FeedbackStore
from textenv.plugins.human.terminal import KeyReader


def run_labelling(args: argparse.Namespace) -> int:
    """Run labelling rounds until ``args.rounds`` are done or the person presses q."""
    from textenv.devices import default_device
    from textenv.envs.text_gen_vector import TextGenVectorEnv
    from textenv.generation import SamplingConfig, generate_episodes
    from textenv.models import load_causal_lm

    # The terminal is checked before the model loads: no waiting to learn that stdin is a pipe.
    if args.mode == "tokens":
        options = HumanOptions(db=str(args.db), pace=float(args.pace), hhat_mix=0.0)
        live = human_source(options, mode="label-tokens")
        store, session_id, reader = live.store, live.session_id, live.reader
        reward = {"human": {"db": options.db, "pace": options.pace, "hhat_mix": options.hhat_mix}}
    else:
        reader = KeyReader()
        store = FeedbackStore(args.db)
        session_id = store.start_session(f"label-{args.mode}", model=args.model, prompts=str(args.prompts))
        reader.start()
        reward = "length"  # not shown: the person's answers are the labels
    try:
        device = default_device()
        print(f"loading {args.model} on {device} ...", flush=True)
        model = load_causal_lm(args.model, device=device)
        per_prompt = args.candidates if args.mode == "compare" else 1
        env = TextGenVectorEnv(
            args.num_prompts * per_prompt, device=device, autoreset_mode="Disabled", model=args.model,
            prompts=args.prompts, reward=reward, max_new_tokens=args.max_new_tokens, chat_template=args.chat_template,
        )
        reward_model = _load_reward_model(args.reward_model) if args.mode == "compare" and args.reward_model else None
        rng = np.random.default_rng(args.seed)
        sampling = SamplingConfig(temperature=args.temperature)
        labels, round_ = 0, 0
        while not args.rounds or round_ < args.rounds:
            picks = rng.integers(len(env.task.prompts), size=args.num_prompts)
            prompts = [env.task.prompts[k] for k in picks for _ in range(per_prompt)]
            episodes = generate_episodes(model, env, sampling=sampling, seed=args.seed + round_, prompts=prompts)
            round_ += 1
            if args.mode == "tokens":
                labels = len(store.keypresses(session_id))
                if live.quit:
                    break
                continue
            ids = [row[: int(n)] for row, n in zip(episodes.completion_ids.tolist(), episodes.completion_mask.sum(1))]
            if args.mode == "rate":
                # each token on its own, special ones as "", as the env gives them to reward sources
                tokens = [env.task.tokenizer.batch_decode([[i] for i in row], skip_special_tokens=True) for row in ids]
                given, quit_ = rate_completions(store, session_id, reader, episodes.prompts, episodes.completions,
                                                ids, tokens, scale=args.scale)
            else:
                groups = np.repeat(np.arange(args.num_prompts), per_prompt)
                if reward_model is not None:
                    mean, std = reward_model.score_with_disagreement(episodes.prompts, episodes.completions)
                else:  # no ensemble: random pairs
                    mean, std = rng.random(len(groups)), np.zeros(len(groups))
                pairs = [
                    (i, j, d if reward_model is not None else float("nan"))  # nan: stored as "no ensemble"
                    for i, j, d in select_pairs(mean, std, groups)
                    if episodes.completions[i] != episodes.completions[j]
                ]
                given, quit_ = compare_completions(store, session_id, reader, episodes.prompts, episodes.completions,
                                                   pairs, rng=rng)
            labels += given
            if quit_:
                break
    finally:
        if args.mode == "tokens":
            live.close()
        else:
            reader.close()
            store.end_session(session_id)
            store.close()
    print(f"\n{labels} labels in {args.db} (all committed as given); "
          f"`textenv feedback export --db {args.db} --output prefs.jsonl` writes the preference pairs")
    return 0


def _load_reward_model(path: str):
    from textenv.plugins.reward_model import load_reward_model

    return load_reward_model(path)
