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

ARMS = ("active", "random", "ratings")


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
        run(study, [a for a in args.arms.split(",") if a], [int(s) for s in args.seeds.split(",")], steps, out, log)
    report(out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
