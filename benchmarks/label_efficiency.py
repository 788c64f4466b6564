"""Reward-model held-out accuracy against the labels it learned from: A/B pairs chosen by the
ensemble's disagreement, random A/B pairs, and 1-5 ratings (issue 18: "active A/B selection needs
fewer comparisons than random pairs for the same reward-model held-out accuracy").

The feedback study (``feedback_study.py``) can afford only the comparisons 15 person-minutes buy
(about 50); this script asks the same question at a few hundred labels, without PPO:

* a larger pool: ``--per-prompt`` (8) completions of each training opening by the untrained
  SmolLM2-135M-Instruct (28 same-prompt pairs per opening instead of 6), and as many of each
  held-out opening, whose same-prompt pairs at least 0.1 of VADER's compound apart are the
  held-out set (a few hundred: ±0.03 on an accuracy);
* the person's answers by the study's rule and noise (:class:`feedback_study.EpisodeJudge`:
  the higher compound wins, a tie under 0.05, 10 % skipped, 5 % the other one; a rating is
  ``round(3 + 2 × compound)``), drawn directly rather than through the terminal session, whose
  handling the study's cells already exercise;
* the study's reward model (a 3-member MiniLM ensemble, 6 epochs), read through its [CLS] pooler
  and fine-tuned whole (the study's cells), or mean-pooled (``--rm-pooling mean``, the library's
  default now), with its head trained alone (``--rm-freeze``); retrained on all labels so far at
  each step of ``--steps``;
* ``active``: the first step's pairs random, each later step's the new pairs the current ensemble
  disagrees on most (``feedback_study.active_pairs``: one per opening first); ``random``: random
  same-prompt pairs; ``ratings``: completions rated opening by opening (openings shuffled), and
  the pairs they imply within an opening (different ratings), as the study's ratings arm
  (``pairs_from_ratings``: without the margin the feedback store gives each such pair).

Each (arm, reward model, seed) writes ``<out>/<arm>-<reward model>-seed<s>.json`` when it ends;
a rerun skips those. Person-minutes are counted as the study counts them (reading at 4 tokens/s
plus a decision delay). Run (``taskset -c 1 env OMP_NUM_THREADS=1`` on a shared machine; an arm
and seed takes about 5 minutes with ``--rm-freeze``, 11 fine-tuning the whole model)::

    .venv/bin/python benchmarks/label_efficiency.py --seeds 0 --rm-pooling mean --rm-freeze
    .venv/bin/python benchmarks/label_efficiency.py --arms random,active --seeds 1 --rm-pooling mean --rm-freeze
    .venv/bin/python benchmarks/label_efficiency.py --arms random --seeds 0,1              # the study's model
    .venv/bin/python benchmarks/label_efficiency.py --arms random --seeds 0 --rm-pooling mean
    .venv/bin/python benchmarks/label_efficiency.py --report

``--learners`` asks the same person, on the same pools and held-out pairs, for every kind of label
(ratings, random A/B answers, best-of-K answers, keypresses) and fits the fast learners of
``few_label_learners.py`` (ridge heads on frozen features: seconds per refit) at each count, with
the person's own ceiling on those pairs; ``learners-seed<s>.json`` per seed, ``learners.md`` the
table (about 10 minutes per seed, most of it the features)::

    .venv/bin/python benchmarks/label_efficiency.py --learners --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import feedback_study as fs  # noqa: E402  (the study's person, pools and reward models)
from few_label_learners import (  # noqa: E402  (ridge learners on frozen features)
    VIEWS,
    completion_features,
    pair_accuracy,
    pair_scores,
    press_scores,
    rating_scores,
    token_embeddings,
)

ARMS = ("active", "random", "ratings")
LEARNER_ARMS = ("ratings", "ab", "best", "presses", "stream", "exact")
"""What the fast learners learn from: 1-5 ratings, random A/B answers, best-of-K answers, keypresses; ``exact``: the
critic's own score of every training completion, the most any learner on these views can get from this pool."""
GOAL = ((100, 0.72), (300, 0.80))
"""Issue 25's goal: held-out pair accuracy from at most this many labels."""


def rm_name(study: fs.Study) -> str:
    """The reward model's settings in a file name: ``head``, ``mean`` or ``mean-frozen``."""
    return study.rm_pooling + ("-frozen" if study.rm_freeze else "")


def judged_pair(judge: fs.EpisodeJudge, a: fs.Sample, b: fs.Sample) -> tuple[Any | None, float]:
    """The person's answer to one A/B question as a preference pair (None: a tie or a skip), and its cost."""
    from textenv.plugins.reward_model import PreferencePair

    key, seconds = judge.compare(a.text, b.text, len(a.ids) + len(b.ids))
    if key not in ("a", "b"):
        return None, seconds
    chosen, rejected = (a, b) if key == "a" else (b, a)
    return PreferencePair(a.prompt, chosen.text, rejected.text), seconds


def ab_curve(study: fs.Study, arm: str, pool: list[fs.Sample], held_out: list[Any], steps: list[int], seed: int,
             work: Path, log) -> list[dict[str, float]]:
    """Ask A/B questions up to each step's count, retrain, measure: one point per step."""
    judge = fs.EpisodeJudge(fs.make_critic(study.critic), study.pace, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 7)
    asked: set[tuple[int, int]] = set()
    pairs, seconds, model, curve = [], 0.0, None, []
    for target in steps:
        n = target - len(asked)
        chosen = (fs.active_pairs(model, pool, asked, n) if arm == "active" and model is not None
                  else fs.random_pairs(pool, asked, rng, n))
        for i, j, _ in chosen:
            asked.add((min(i, j), max(i, j)))
            pair, cost = judged_pair(judge, pool[i], pool[j])
            seconds += cost
            if pair is not None:
                pairs.append(pair)
        if not pairs:  # ties and skips only so far: nothing to learn from
            continue
        model = fs.train_rm(study, pairs, work, seed)
        curve.append({"questions": len(asked), "pairs": len(pairs), "person_minutes": seconds / 60.0,
                      "accuracy": fs.rm_accuracy(model, held_out)})
        log(f"  {arm} seed {seed}: {len(asked)} questions, {len(pairs)} pairs -> accuracy {curve[-1]['accuracy']:.3f}")
    return curve


def ratings_curve(study: fs.Study, pool: list[fs.Sample], held_out: list[Any], steps: list[int], seed: int,
                  work: Path, log) -> list[dict[str, float]]:
    """Rate completions opening by opening up to each step's count, retrain on the implied pairs, measure."""
    from textenv.plugins.reward_model import pairs_from_ratings

    judge = fs.EpisodeJudge(fs.make_critic(study.critic), study.pace, np.random.default_rng(seed))
    groups = np.random.default_rng(seed + 7).permutation(len({s.group for s in pool}))
    order = [i for g in groups for i, s in enumerate(pool) if s.group == g]
    ratings: dict[int, dict[str, float]] = {}  # group -> completion -> rating
    seconds, done, curve = 0.0, 0, []
    for target in steps:
        for i in order[done:target]:
            key, cost = judge.rate(pool[i].text, len(pool[i].ids))
            seconds += cost
            if key.isdigit():
                ratings.setdefault(pool[i].group, {})[pool[i].text] = float(key)
        done = target
        prompt_of = {s.group: s.prompt for s in pool}
        pairs = [p for g, rated in ratings.items() for p in pairs_from_ratings(prompt_of[g], rated)]
        if not pairs:
            continue
        model = fs.train_rm(study, pairs, work, seed)
        curve.append({"questions": done, "pairs": len(pairs), "person_minutes": seconds / 60.0,
                      "accuracy": fs.rm_accuracy(model, held_out)})
        log(f"  ratings seed {seed}: {done} ratings, {len(pairs)} pairs -> accuracy {curve[-1]['accuracy']:.3f}")
    return curve


def run(study: fs.Study, arms: list[str], seeds: list[int], steps: dict[str, list[int]], out: Path, log) -> None:
    """Every (arm, seed) not yet in ``out``."""
    train_prompts, held_out_prompts = fs.split_prompts(study)
    for seed in seeds:
        todo = [a for a in arms if not (out / f"{a}-{rm_name(study)}-seed{seed}.json").exists()]
        if not todo:
            continue
        cache = out / "work" / f"pool-{study.model}-{{}}x{study.per_prompt}-seed{seed}.json"
        pool = fs.sample_pool(study, train_prompts, seed, Path(str(cache).format(len(train_prompts))))
        held_pool = fs.sample_pool(study, held_out_prompts, seed + 500, Path(str(cache).format(len(held_out_prompts))))
        held_out = fs.held_out_pairs(held_pool, fs.make_critic(study.critic))
        log(f"seed {seed}: {len(pool)} completions to label, {len(held_out)} held-out pairs")
        for arm in todo:
            start = time.perf_counter()
            work = out / "work" / f"rm-{arm}-{rm_name(study)}-seed{seed}"
            curve = (ratings_curve(study, pool, held_out, steps[arm], seed, work, log) if arm == "ratings"
                     else ab_curve(study, arm, pool, held_out, steps[arm], seed, work, log))
            result = {"arm": arm, "reward_model": rm_name(study), "seed": seed, "curve": curve,
                      "held_out_pairs": len(held_out), "seconds": round(time.perf_counter() - start, 1),
                      "commit": fs.git_commit(), "study": dataclasses.asdict(study)}
            fs.atomic_write(out / f"{arm}-{rm_name(study)}-seed{seed}.json", json.dumps(result, indent=1) + "\n")


def report(out: Path, log) -> str:
    """Accuracy per step, mean ± sd over seeds, per arm and reward model (one markdown table)."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*-seed*.json")):
        if path.name.startswith("learners-"):  # the fast learners' runs: learner_report's
            continue
        r = json.loads(path.read_text())
        runs.setdefault((r["arm"], r["reward_model"]), []).append(r)
    lines = ["| arm | reward model | labels | pairs | person-min | held-out accuracy (mean ± sd) | seeds |",
             "|---|---|---:|---:|---:|---|---:|"]
    for (arm, rm), found in sorted(runs.items(), key=lambda kv: (ARMS.index(kv[0][0]), kv[0][1])):
        for k in range(max(len(r["curve"]) for r in found)):
            points = [r["curve"][k] for r in found if len(r["curve"]) > k]
            acc = np.array([p["accuracy"] for p in points])
            sd = f" ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else ""
            pairs, minutes = np.mean([p["pairs"] for p in points]), np.mean([p["person_minutes"] for p in points])
            lines.append(f"| {arm} | {rm} | {points[0]['questions']} | {pairs:.0f} | {minutes:.1f} | "
                         f"{acc.mean():.3f}{sd} | {len(points)} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    log(table)
    return table


# --------------------------------------------------------------------------- fast learners (--learners)


def held_out_index_pairs(pool: list[fs.Sample], critic) -> np.ndarray:
    """The held-out same-prompt pairs as rows (better index, worse index) into ``pool``: (P, 2)."""
    scores = [critic.completion(s.text) for s in pool]
    rows = [(i, j) if scores[i] > scores[j] else (j, i)
            for i in range(len(pool)) for j in range(i + 1, len(pool))
            if pool[i].group == pool[j].group and pool[i].text != pool[j].text
            and abs(scores[i] - scores[j]) >= fs.HELD_OUT_GAP]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def person_ceilings(judge, pool: list[fs.Sample], held: np.ndarray, draws: int = 5) -> dict[str, float]:
    """How often the person's own noisy answers agree with the critic on the held-out pairs: one rating of each
    completion (equal ratings and skips count one half), or one A/B answer per pair (ties and skips one half)."""
    rating, ab = [], []
    for _ in range(draws):
        keys = [judge.rate(s.text, len(s.ids))[0] for s in pool]
        given = np.array([float(k) if k.isdigit() else np.nan for k in keys])
        gap = given[held[:, 0]] - given[held[:, 1]]
        rating.append(np.mean(np.where(np.isnan(gap), 0.5, (gap > 0) + 0.5 * (gap == 0))))
        answers = [judge.compare(pool[i].text, pool[j].text, 0)[0] for i, j in held]
        ab.append(np.mean([1.0 if k == "a" else 0.0 if k == "b" else 0.5 for k in answers]))
    return {"rating": float(np.mean(rating)), "ab": float(np.mean(ab))}


def cached_features(study: fs.Study, pool: list[fs.Sample], path: Path) -> dict[str, np.ndarray]:
    """:func:`few_label_learners.completion_features` of ``pool``, kept in ``path`` (an .npz)."""
    if path.exists():
        return dict(np.load(path))
    views = completion_features(pool, study.model, study.backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **views)
    return views


def opening_order(pool: list[fs.Sample], rng: np.random.Generator) -> list[int]:
    """Pool indices opening by opening, the openings shuffled: the order completions are shown in."""
    groups = rng.permutation(sorted({s.group for s in pool}))
    return [i for g in groups for i, s in enumerate(pool) if s.group == g]


def learner_point(labels: int, pairs: int, seconds: float, scores: dict[str, np.ndarray], held: np.ndarray):
    """One point of a curve: the labels so far, their pairs and person-minutes, each learner's accuracy."""
    return {"labels": labels, "pairs": pairs, "person_minutes": seconds / 60.0,
            "accuracy": {name: pair_accuracy(s, held) for name, s in scores.items()}}


def learner_curves(study: fs.Study, pool, held_pool, train, held_views, held, steps: dict[str, list[int]],
                   seed: int, k: int) -> dict[str, list[dict[str, Any]]]:
    """Each arm's points: the labels asked in order, the learners refitted at each step's count."""
    from textenv.plugins.human.live import HumanOptions

    gap = HumanOptions().gap
    critic = fs.make_critic(study.critic)
    curves: dict[str, list[dict[str, Any]]] = {}

    # the views' own ceiling: every training completion, the critic's exact score as the target (no person, no noise)
    exact = np.array([critic.completion(s.text) for s in pool])
    curves["exact"] = [learner_point(len(pool), len(pool), 0.0,
                                     rating_scores(train, held_views, np.arange(len(pool)), exact), held)]

    judge, rng = fs.EpisodeJudge(critic, study.pace, np.random.default_rng(seed)), np.random.default_rng(seed + 7)
    order, rated, ratings, seconds, asked = opening_order(pool, rng), [], [], 0.0, 0
    curves["ratings"] = []
    for n in steps["ratings"]:
        for i in order[asked:n]:
            key, cost = judge.rate(pool[i].text, len(pool[i].ids))
            seconds += cost
            if key.isdigit():  # a skip costs the reading and gives nothing
                rated.append(i)
                ratings.append(float(key))
        asked = min(n, len(order))
        if len(ratings) > 2:
            scores = rating_scores(train, held_views, np.array(rated), np.array(ratings))
            curves["ratings"].append(learner_point(asked, len(ratings), seconds, scores, held))

    def pair_curve(arm: str, questions: list[Any], answer) -> list[dict[str, Any]]:
        chosen, rejected, seconds, points, asked = [], [], 0.0, [], 0
        for n in steps[arm]:
            for question in questions[asked:n]:
                pairs, cost = answer(question)
                seconds += cost
                for c, r in pairs:
                    chosen.append(c)
                    rejected.append(r)
            asked = min(n, len(questions))
            if chosen:
                scores = pair_scores(train, held_views, np.array(chosen), np.array(rejected))
                points.append(learner_point(asked, len(chosen), seconds, scores, held))
        return points

    judge, rng = fs.EpisodeJudge(critic, study.pace, np.random.default_rng(seed)), np.random.default_rng(seed + 7)

    def ab(question: tuple[int, int, float]):
        i, j, _ = question
        key, cost = judge.compare(pool[i].text, pool[j].text, len(pool[i].ids) + len(pool[j].ids))
        return ([(i, j)] if key == "a" else [(j, i)] if key == "b" else []), cost

    curves["ab"] = pair_curve("ab", fs.random_pairs(pool, set(), rng, max(steps["ab"])), ab)

    judge, rng = fs.EpisodeJudge(critic, study.pace, np.random.default_rng(seed)), np.random.default_rng(seed + 7)
    questions = []  # each opening's completions in disjoint groups of k, the openings shuffled
    for g in rng.permutation(sorted({s.group for s in pool})):
        members = rng.permutation([i for i, s in enumerate(pool) if s.group == g])
        questions += [list(members[a : a + k]) for a in range(0, len(members) - k + 1, k)]

    def best(question: list[int]):
        texts = [pool[i].text for i in question]
        top, bottom, cost = judge.best_of(texts, sum(len(pool[i].ids) for i in question))
        if top is None:
            return [], cost
        pairs = [(question[top], question[o]) for o in range(len(question)) if o != top]
        if bottom is not None:
            pairs += [(question[o], question[bottom]) for o in range(len(question)) if o not in (top, bottom)]
        return [(c, r) for c, r in pairs if pool[c].text != pool[r].text], cost

    curves["best"] = pair_curve("best", questions, best)

    # keypresses: each shown completion's words the person reacts to, a press each (a miss drops it, a wrong key
    # flips it); "presses" credits each to the token it judged (the best case of any credit assignment), "stream"
    # presses it a reaction delay after the word's last token appeared and credits it over the 0.2-4 s window
    # before, as the live session does; a completion costs its streaming at the pace and the gap after it
    embeddings = token_embeddings(study.model)
    for arm in ("presses", "stream"):
        judge, rng = fs.EpisodeJudge(critic, study.pace, np.random.default_rng(seed)), np.random.default_rng(seed + 7)
        shown, labels, seconds, count, curves[arm] = [], [], 0.0, 0, []
        order = opening_order(pool, rng)
        for n in steps["presses"]:
            while count < n and len(shown) < len(order):
                sample = pool[order[len(shown)]]
                pressed = word_presses(sample, critic, judge.behaviour, rng)
                count += len(pressed)
                labels.append(credited(pressed, len(sample.ids), study.pace, judge.behaviour, rng,
                                       exact=arm == "presses"))
                shown.append(sample.ids)
                seconds += len(sample.ids) / study.pace + gap
            held_ids = [s.ids for s in held_pool]
            scores = {"tokens": press_scores(embeddings, shown, labels, held_ids),
                      "Ĥ": hhat_scores(shown, labels, held_ids)}
            curves[arm].append(learner_point(n, len(shown), seconds, scores, held))  # n: the press budget
    return curves


def word_presses(sample: fs.Sample, critic, behaviour, rng: np.random.Generator) -> list[tuple[int, float]]:
    """The person's presses on a completion: (the judged word's last token, +1 or -1) per word it reacts to."""
    from textenv.plugins.human.simulated import token_judgements

    judged = token_judgements(sample.tokens, critic, behaviour)[: len(sample.ids)]
    presses = []
    for t in np.flatnonzero(judged):
        if t + 1 < len(judged) and judged[t + 1] == judged[t]:
            continue  # the word goes on: the person reacts when it ends
        if rng.random() < behaviour.miss:
            continue
        presses.append((int(t), float(np.sign(judged[t])) * (-1.0 if rng.random() < behaviour.flip else 1.0)))
    return presses


def credited(presses: list[tuple[int, float]], n_tokens: int, pace: float, behaviour, rng: np.random.Generator,
             exact: bool) -> np.ndarray:
    """Per-token rewards from a completion's presses: on the judged token (``exact``), or as the live session
    credits them (a press a reaction delay after its word's last token appeared, spread over the tokens shown
    0.2-4 s before it, the next token appearing 1/pace later)."""
    from textenv.plugins.human.credit import credit_keypresses, hidden_times

    rewards = np.zeros(n_tokens)
    if exact:
        for t, value in presses:
            rewards[t] = value
        return rewards
    if not presses:
        return rewards
    shown_at = np.arange(n_tokens) / pace  # (T,)
    times = [shown_at[t] + 1.0 / pace + rng.uniform(behaviour.reaction_min, behaviour.reaction_max)
             for t, _ in presses]
    rewards, _ = credit_keypresses(times, [v for _, v in presses], shown_at, hidden_times(shown_at, n_tokens / pace))
    return rewards


def hhat_scores(shown_ids: list[list[int]], rewards: list[np.ndarray], held_ids: list[list[int]]) -> np.ndarray:
    """Ĥ (the live source's default estimator) fitted to the credited rewards; a completion scores its sum."""
    from textenv.plugins.human.hhat import HumanRewardModel

    hhat = HumanRewardModel()
    hhat.observe(shown_ids, rewards)
    hhat.update()
    return np.array([p.sum() for p in hhat.predict(held_ids)])


def learner_run(study: fs.Study, seeds: list[int], steps: dict[str, list[int]], k: int, out: Path, log) -> None:
    """Every seed not yet in ``out``: the fast learners' curves on every kind of label, and the person's ceiling."""
    train_prompts, held_out_prompts = fs.split_prompts(study)
    critic = fs.make_critic(study.critic)
    for seed in seeds:
        path = out / f"learners-seed{seed}.json"
        if path.exists():
            continue
        start = time.perf_counter()
        cache = out / "work" / f"pool-{study.model}-{{}}x{study.per_prompt}-seed{seed}.json"
        pool = fs.sample_pool(study, train_prompts, seed, Path(str(cache).format(len(train_prompts))))
        held_pool = fs.sample_pool(study, held_out_prompts, seed + 500, Path(str(cache).format(len(held_out_prompts))))
        held = held_out_index_pairs(held_pool, critic)
        features = out / "work" / f"features-{study.model}-{Path(study.backbone).name}-{{}}-seed{seed}.npz"
        train = cached_features(study, pool, Path(str(features).format("train")))
        held_views = cached_features(study, held_pool, Path(str(features).format("held")))
        log(f"seed {seed}: {len(pool)} completions to label, {len(held)} held-out pairs")
        ceilings = person_ceilings(fs.EpisodeJudge(critic, study.pace, np.random.default_rng(seed + 99)), held_pool,
                                   held)
        curves = learner_curves(study, pool, held_pool, train, held_views, held, steps, seed, k)
        for arm, points in curves.items():
            for p in points:
                best = max(p["accuracy"], key=p["accuracy"].get)
                log(f"  {arm} seed {seed}: {p['labels']} labels -> best {best} {p['accuracy'][best]:.3f}")
        result = {"seed": seed, "ceilings": ceilings, "curves": curves, "held_out_pairs": len(held), "k": k,
                  "seconds": round(time.perf_counter() - start, 1), "commit": fs.git_commit(),
                  "study": dataclasses.asdict(study)}
        fs.atomic_write(path, json.dumps(result, indent=1) + "\n")


def learner_report(out: Path, log) -> str:
    """Held-out accuracy per arm and label count, each learner's mean ± sd over seeds; the ceilings; the goal."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("learners-seed*.json"))]
    if not runs:
        return ""
    learners = [*VIEWS, "ensemble", "tokens", "Ĥ"]
    lines = [f"| arm | labels | pairs · rated · shown | person-min | {' | '.join(learners)} | seeds |",
             "|---|---:|---:|---:|" + "---|" * len(learners) + "---:|"]
    best_at: dict[int, tuple[float, str]] = {}
    in_fifteen = (0.0, "nothing")
    for arm in LEARNER_ARMS:
        counts = sorted({p["labels"] for r in runs for p in r["curves"].get(arm, [])})
        for n in counts:
            points = [p for r in runs for p in r["curves"].get(arm, []) if p["labels"] == n]
            pairs = np.mean([p["pairs"] for p in points])
            minutes = np.mean([p["person_minutes"] for p in points])
            cells = []
            for name in learners:
                acc = np.array([p["accuracy"][name] for p in points if name in p["accuracy"]])
                if not len(acc):
                    cells.append("")
                    continue
                cells.append(f"{acc.mean():.3f}" + (f" ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else ""))
                if arm in ("presses", "exact"):  # bounds no session gives: credit on the judged token; no noise
                    continue
                for limit, _ in GOAL:
                    if n <= limit and acc.mean() > best_at.get(limit, (0.0, ""))[0]:
                        best_at[limit] = (float(acc.mean()), f"{name} on {n} {arm} labels")
                if minutes <= 15.0 and acc.mean() > in_fifteen[0]:
                    in_fifteen = (float(acc.mean()), f"{name} on {n} {arm} labels, {minutes:.1f} person-min")
            lines.append(f"| {arm} | {n} | {pairs:.0f} | {minutes:.1f} | {' | '.join(cells)} | {len(points)} |")
    ceilings = {k: np.mean([r["ceilings"][k] for r in runs]) for k in runs[0]["ceilings"]}
    lines += ["", f"The person's own ceiling on the same held-out pairs ({runs[0]['held_out_pairs']} in seed "
              f"{runs[0]['seed']}): one noisy rating {ceilings['rating']:.3f}, one noisy A/B answer "
              f"{ceilings['ab']:.3f} (best-of-{runs[0]['k']} questions; presses credited to the judged token, "
              "stream as the live session credits them)."]
    for limit, goal in GOAL:
        got, where = best_at.get(limit, (float("nan"), "nothing"))
        verdict = "met" if got >= goal else f"short by {goal - got:.3f}"
        lines.append(f"Goal {goal:.2f} from <= {limit} labels (the bounds aside: presses on their judged token, the "
                     f"critic's exact scores): best {got:.3f} ({where}): {verdict}.")
    lines.append(f"Best within 15 person-minutes: {in_fifteen[0]:.3f} ({in_fifteen[1]}).")
    table = "\n".join(lines)
    (out / "learners.md").write_text(table + "\n")
    log(table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="only print the table of the runs in --out")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", default="25,50,100,200", help="A/B questions asked at each retraining")
    parser.add_argument("--rating-steps", default="36,72,144", help="ratings given at each retraining")
    parser.add_argument("--per-prompt", type=int, default=8, help="completions of each opening in the pools")
    parser.add_argument("--model", default="smollm2-135m", help="the policy (tiny-random for tests)")
    parser.add_argument("--critic", default="vader", choices=["vader", "case"])
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--rm-pooling", choices=["mean", "head"], default="head",
                        help="how the reward models read MiniLM (default head: its [CLS] pooler, as in the study)")
    parser.add_argument("--rm-freeze", action="store_true", help="train the reward models' head only")
    parser.add_argument("--out", default="runs/label_efficiency")
    parser.add_argument("--learners", action="store_true",
                        help="the fast learners on frozen features, on every kind of label (not the study's model)")
    parser.add_argument("--learner-steps", default="ratings=36,72,100,144,200,288;ab=25,50,100,200,300;"
                        "best=10,20,36,50,72;presses=50,100,150,200,300",
                        help="labels at each refit, per arm")
    parser.add_argument("--candidates", type=int, default=4, help="K of the best-of-K questions")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    if not args.report:
        backbone = args.backbone or ("tiny-random" if args.model == "tiny-random" else fs.Study.backbone)
        study = fs.Study(model=args.model, critic=args.critic, backbone=backbone, per_prompt=args.per_prompt,
                         rm_pooling=args.rm_pooling, rm_freeze=args.rm_freeze)
        steps = {"active": [int(s) for s in args.steps.split(",")], "random": [int(s) for s in args.steps.split(",")],
                 "ratings": [int(s) for s in args.rating_steps.split(",")]}
        seeds = [int(s) for s in args.seeds.split(",")]
        if args.learners:
            steps = {arm: [int(n) for n in counts.split(",")]
                     for arm, counts in (part.split("=") for part in args.learner_steps.split(";"))}
            learner_run(study, seeds, steps, args.candidates, out, log)
        else:
            run(study, [a for a in args.arms.split(",") if a], seeds, steps, out, log)
    if args.learners or args.report:
        learner_report(out, log)
    if not args.learners or args.report:
        report(out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
