"""``textenv sft``: supervised fine-tuning on demonstrations from the command line."""

from __future__ import annotations

import argparse
import time

from textenv.agents.sft import SFTConfig, SFTDataError, SFTOutputError, train_sft
from textenv.models import DEFAULT_MODEL
from textenv.plugin_manager import hookimpl


@hookimpl
def textenv_add_commands(subparsers):
    """Add ``textenv sft`` to the command line."""
    defaults = SFTConfig()
    p = subparsers.add_parser(
        "sft",
        help="fine-tune a model on demonstrations (JSONL prompt, completion), loss on completions",
    )
    p.add_argument("data", help='JSONL file, one {"prompt": ..., "completion": ...} per line')
    p.add_argument(
        "--output", required=True, metavar="DIR", help="where the fine-tuned model is saved"
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="local path, hub id or smollm2-135m (default)"
    )
    p.add_argument("--epochs", type=float, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak learning rate")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument(
        "--max-length",
        type=int,
        default=defaults.max_length,
        help="longest prompt + completion in tokens (longer ones are truncated)",
    )
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template")
    p.add_argument(
        "--device", default=defaults.device, help="auto (CUDA if available), cpu, cuda ..."
    )
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=defaults.precision)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--overwrite", action="store_true", help="replace a fine-tuned model saved in DIR")
    p.set_defaults(run=run_sft)
    return [SFTDataError, SFTOutputError]


def run_sft(args: argparse.Namespace) -> int:
    """Run ``textenv sft`` with parsed arguments: train, save, print the losses."""
    try:
        config = SFTConfig(
            epochs=args.epochs,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            max_length=args.max_length,
            chat_template=args.chat_template,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
        )
    except ValueError as exc:  # a bad option value
        raise SFTDataError(str(exc)) from None
    start = time.perf_counter()
    print(f"fine-tuning {args.model} on {args.data} ...", flush=True)
    result = train_sft(args.data, args.output, model=args.model, config=config, overwrite=args.overwrite)
    first = result.losses[0][1] if result.losses else float("nan")
    print(
        f"{result.num_examples} demonstrations ({result.num_completion_tokens} completion tokens"
        f"{f', {result.num_truncated} truncated' if result.num_truncated else ''}), "
        f"{args.epochs:g} epochs in {result.seconds:.1f} s"
    )
    print(f"loss: first {first:.4f}, final {result.final_loss:.4f}")
    print(f"saved to {result.path} (total {time.perf_counter() - start:.0f} s)")
    return 0
