"""``textenv feedback``: label completions at the terminal, export preferences, summarize the store.

* ``textenv feedback label --mode tokens|rate|compare|best``: generate with a model
  and ask for keypress feedback while tokens stream (TAMER), a rating of each whole
  completion, A/B choices (the pairs where a reward-model ensemble disagrees most,
  with ``--reward-model DIR``), or the best (and worst) of K completions of a prompt;
  no training.
* ``textenv feedback export --db DB --output prefs.jsonl``: the preference pairs
  ``{"prompt", "chosen", "rejected"}`` the reward model trains on.
* ``textenv feedback stats --db DB``: what the store holds.

Live feedback during training is ``textenv train --reward "human(db='run/feedback.db')"``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from textenv.envs.task import DEFAULT_PROMPTS
from textenv.models import DEFAULT_MODEL
from textenv.plugin_manager import hookimpl
from textenv.plugins.human.store import FeedbackStore, FeedbackStoreError, check_store_path
from textenv.plugins.human.terminal import TerminalError


@hookimpl
def textenv_add_commands(subparsers):
    """Add ``textenv feedback`` and its subcommands."""
    parser = subparsers.add_parser("feedback", help="human feedback: label at the terminal, export preferences, stats")
    commands = parser.add_subparsers(dest="feedback_command", required=True)

    p = commands.add_parser("label", help="generate completions and label them at the terminal (no training)")
    p.add_argument("--db", default="feedback.db", help="the SQLite feedback store (created if missing)")
    p.add_argument("--mode", choices=["tokens", "rate", "compare", "best"], default="rate",
                   help="tokens: keypresses while tokens stream; rate: 1-5 per completion; compare: A/B; "
                        "best: the best (and worst) of --candidates completions")
    p.add_argument("--model", default=DEFAULT_MODEL, help="local path, hub id or smollm2-135m (default)")
    p.add_argument("--prompts", default=DEFAULT_PROMPTS, help="prompt set name, .txt or .jsonl file")
    p.add_argument("--num-prompts", type=int, default=4, help="prompts per round")
    p.add_argument("--candidates", type=int, default=4,
                   help="completions sampled per prompt, shown one after another (pairs form within a prompt)")
    p.add_argument("--rounds", type=int, default=0, help="rounds of generation (0: until q)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--pace", type=float, default=4.0, help="tokens mode: tokens shown per second")
    p.add_argument("--scale", type=int, default=5, choices=range(2, 10), metavar="2..9",
                   help="rate mode: ratings go from 1 to this (one key each)")
    p.add_argument("--reward-model", default=None, metavar="DIR",
                   help="compare mode: a reward-model ensemble; pairs are chosen where it disagrees most")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_label)

    p = commands.add_parser("export", help="write the preference pairs as JSONL {prompt, chosen, rejected}")
    p.add_argument("--db", required=True, help="the SQLite feedback store")
    p.add_argument("--output", required=True, help="the JSONL file to write")
    p.add_argument("--no-ratings", action="store_true",
                   help="leave out pairs from ratings (two completions of a prompt rated differently)")
    p.add_argument("--no-tokens", action="store_true",
                   help="leave out pairs from keypresses (two completions of a prompt whose credited "
                        "rewards differ by half a press or more)")
    p.set_defaults(run=_export)

    p = commands.add_parser("stats", help="summarize what a feedback store holds")
    p.add_argument("--db", required=True, help="the SQLite feedback store")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(run=_stats)
    return [FeedbackStoreError, TerminalError, LabelOptionError]


class LabelOptionError(ValueError):
    """An option of ``textenv feedback label`` that cannot work; the message says which and why."""


def _open_existing(path: str) -> FeedbackStore:
    check_store_path(path)
    if not Path(path).is_file():
        raise FeedbackStoreError(f"{path}: no such feedback store")
    return FeedbackStore(path)


def _export(args: argparse.Namespace) -> int:
    kinds = {"include_ratings": not args.no_ratings, "include_tokens": not args.no_tokens}
    with _open_existing(args.db) as store:
        n = store.export_preferences(args.output, **kinds)
        why = "" if n else f" ({store.why_no_pairs(**kinds)})"  # 0 pairs from hours of labels needs a reason
    print(f"wrote {n} preference pairs to {args.output}{why}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _open_existing(args.db) as store:
        stats = store.stats()
        why = f" ({store.why_no_pairs()})" if not stats["preference_pairs"] else ""
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    minutes = stats["session_seconds"] / 60
    mean_rating = f", mean {stats['mean_rating']:.2f}" if stats["mean_rating"] is not None else ""
    print(f"{args.db}: {stats['sessions']} sessions ({minutes:.1f} min), {stats['episodes_shown']} completions shown\n"
          f"  keypresses   {stats['keypresses']} ({stats['keypresses_good']} good, {stats['keypresses_bad']} bad), "
          f"credited to {stats['episodes_credited']} completions\n"
          f"  ratings      {stats['ratings']}{mean_rating}\n"
          f"  comparisons  {stats['comparisons']} (A {stats['comparisons_a']}, B {stats['comparisons_b']}, "
          f"tie {stats['comparisons_tie']}, skip {stats['comparisons_skip']})\n"
          f"  best-of-K    {stats['choices']} ({stats['choices_with_worst']} with a worst)\n"
          f"  preference pairs for export: {stats['preference_pairs']}{why}")
    return 0


def _label(args: argparse.Namespace) -> int:
    check_label_options(args)  # in one line, before the terminal or the model is touched
    from textenv.plugins.human.labelling import run_labelling

    return run_labelling(args)


def check_label_options(args: argparse.Namespace) -> None:
    """Refuse ``textenv feedback label`` options that cannot work.

    Raises:
        LabelOptionError: the first problem found.
    """
    if args.num_prompts < 1:
        raise LabelOptionError(f"--num-prompts is the prompts per round, at least 1, got {args.num_prompts}")
    if args.candidates < 1:
        raise LabelOptionError(f"--candidates is the completions per prompt, at least 1, got {args.candidates}")
    if args.mode in ("compare", "best") and args.candidates < 2:
        raise LabelOptionError(f"--mode {args.mode} chooses among completions of one prompt: --candidates must be "
                               f"at least 2, got {args.candidates}")
    if args.mode == "best" and args.candidates > 9:
        raise LabelOptionError(f"--mode best numbers the completions 1 to 9 (one key each): --candidates must be "
                               f"at most 9, got {args.candidates}")
