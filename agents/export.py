"""``textenv export``: a trained policy out of a checkpoint, as a directory other tools load.

``textenv export RUN_OR_CHECKPOINT --merge OUT`` writes a plain transformers model (the LoRA adapter folded into
the base weights), which ``AutoModelForCausalLM.from_pretrained(OUT)`` loads without textenv or peft. Without
``--merge`` a LoRA run gives its adapter directory, which ``PeftModel.from_pretrained(base, OUT)`` loads (its
``adapter_config.json`` names the base). A full fine-tuning checkpoint holds a plain model already: either way
it is copied. The tokenizer goes along; the value head stays behind (it is the trainer's, not the model's).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from textenv.agents import checkpoint as ckpt
from textenv.agents import lora
from textenv.agents.checkpoint import STATE_FILE, CheckpointError
from textenv.agents.run_definition import LORA_BASE
from textenv.plugin_manager import hookimpl


class ExportError(Exception):
    """A wrong source or output given to ``textenv export``; printed as one line, exit status 2."""


@hookimpl
def textenv_add_commands(subparsers):
    """Add ``textenv export``."""
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint's policy as a transformers model (--merge) or a PEFT adapter directory",
        description="Write the policy of a checkpoint (or of a run directory's newest complete checkpoint) to OUT: "
                    "with --merge a plain transformers model (a LoRA adapter folded into the base weights) that "
                    "AutoModelForCausalLM.from_pretrained loads; without it, a LoRA run's adapter directory that "
                    "PeftModel.from_pretrained loads. A full fine-tuning checkpoint's model is copied either way.",
    )
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a checkpoint directory, or a run directory")
    p.add_argument("output", metavar="OUT", help="the directory to write (new, or empty; see --overwrite)")
    p.add_argument("--merge", action="store_true", help="fold the LoRA adapter into the base: a plain model")
    p.add_argument("--overwrite", action="store_true", help="replace what OUT holds (never the run being exported)")
    p.set_defaults(run=run_export)
    return [ExportError, CheckpointError]


def run_export(args: argparse.Namespace) -> int:
    """Run ``textenv export`` with parsed arguments."""
    source = find_checkpoint(args.source)
    out = export(source, args.output, merge=args.merge, overwrite=args.overwrite)
    print(f"exported {source} to {out}")
    return 0


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``path`` names: itself if it is one (verified), else its run's newest complete one.

    Raises:
        ExportError: no such directory, or it holds no checkpoint.
        CheckpointError: the checkpoint is damaged (the file is named).
    """
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint or run directory")
    if ckpt.is_checkpoint(path):
        ckpt.verify(path)
        return path
    try:
        return ckpt.latest(path)[0]
    except FileNotFoundError as exc:
        raise ExportError(str(exc)) from None


def refuse_overlap(checkpoint: Path, output: str | Path) -> None:
    """Refuse an output that is, holds or lies inside the run being exported (or the checkpoint itself, when it
    is outside any run): writing there, ``--overwrite`` or not, would replace or mix the run's own files.

    Raises:
        ExportError: naming the output and the run.
    """
    from textenv.agents.run_dir import run_of_checkpoint

    source = run_of_checkpoint(checkpoint, None) or checkpoint
    source, out = Path(source).resolve(), Path(output).resolve()
    if out == source or out.is_relative_to(source) or source.is_relative_to(out):
        raise ExportError(f"{output}: is, holds or lies inside {source}, the run being exported; export to a "
                          "directory outside it")


def export(checkpoint: str | Path, output: str | Path, *, merge: bool, overwrite: bool = False) -> Path:
    """Write a (verified) checkpoint's policy to ``output``, through a temporary directory renamed at the end.

    Args:
        checkpoint: a checkpoint directory (:meth:`textenv.agents.PPO.save`).
        output: where; a new or empty directory unless ``overwrite``.
        merge: a LoRA adapter folded into its base (a plain transformers model), else the adapter directory.
        overwrite: replace what ``output`` holds.

    Returns:
        ``output``.

    Raises:
        ExportError: ``output`` is a file, holds something and ``overwrite`` is False, or overlaps the run
            being exported.
        CheckpointError: the LoRA base recorded in the run cannot be loaded.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    refuse_overlap(checkpoint, output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ExportError(f"{output}: exists and is not an empty directory (--overwrite replaces it)")
    model_dir = checkpoint / "model"
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if merge and lora.is_adapter_dir(model_dir):
            _write_merged(checkpoint, tmp)
        else:  # the adapter as saved, or a full fine-tuning checkpoint's plain model
            shutil.copytree(model_dir, tmp)
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _write_merged(checkpoint: Path, out: Path) -> None:
    import torch

    from textenv.models import load_causal_lm, load_tokenizer

    run = ckpt.read_json(checkpoint / STATE_FILE).get("run") or {}
    base = run.get(LORA_BASE) or run.get("model_path") or run.get("model")
    try:
        base_model = load_causal_lm(base, device="cpu", dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a moved directory, no network: one line naming it
        raise CheckpointError(f"{checkpoint}: its LoRA base {base!r} ({LORA_BASE} in {STATE_FILE}) cannot be loaded "
                              f"({type(exc).__name__})") from exc
    model = lora.merged(lora.load(base_model, checkpoint / "model", trainable=False))
    model.save_pretrained(out)
    load_tokenizer(str(checkpoint / "model")).save_pretrained(out)
