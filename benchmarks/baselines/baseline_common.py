"""What the trl baseline scripts share: paths, common flags, process figures and the JSON summary.

Standard library only: each baseline imports it from its own venv (trl 0.11.4 on transformers
4.46, trl 1.16 on the project's), as a sibling module of the script it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = (
    Path(os.environ.get("TEXTENV_CACHE") or Path.home() / ".cache" / "textenv") / "models" / "smollm2-135m"
)
DEFAULT_PROMPTS = REPO / "textenv" / "data" / "movie_reviews.txt"


def common_parser(description: str, *, precision: str, precision_help: str, step: str) -> argparse.ArgumentParser:
    """The flags every baseline takes: model, prompts, precision, steps, warm-up, tokens, seed.

    Args:
        description: the parser's description.
        precision: the default of ``--precision`` (``fp32`` or ``bf16``).
        precision_help: its help text.
        step: what one timed step is, for the help of ``--steps``.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                   help="converted SmolLM2-135M safetensors directory (default: %(default)s)")
    p.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="one prompt per line (default: %(default)s)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=precision, help=precision_help)
    p.add_argument("--steps", type=int, default=3, help=f"timed {step}s after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p


def require_trl(version: str, name: str) -> None:
    """Exit with a one-line message when trl is not importable: the baselines run in venvs of their own.

    Args:
        version: the trl version the script is written for.
        name: its venv's short name: ``setup_NAME.sh`` makes ``.venv-NAME``.
    """
    if importlib.util.find_spec("trl") is None:
        sys.exit(f"trl is not installed for {sys.executable}: this baseline needs trl {version} in a venv of its own; "
                 f"make it with `bash benchmarks/baselines/setup_{name}.sh`, then run "
                 f"`benchmarks/baselines/.venv-{name}/bin/python benchmarks/baselines/{Path(sys.argv[0]).name}`")


def read_prompts(path: Path) -> list[str]:
    """The non-blank lines of a prompts file."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    t = os.times()
    return t.user + t.system


def log_step(label: str, tag: str, row: dict[str, Any]) -> None:
    """One step's figures as a line on stderr (stdout is kept for the JSON summary)."""
    figures = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    print(f"[{label}] {tag}: {figures}", file=sys.stderr, flush=True)


def print_summary(
    *,
    system: str,
    precision: str,
    rows: list[dict[str, Any]],
    phases: tuple[str, ...],
    warmup: int,
    workload: dict[str, Any],
    versions: dict[str, str],
    torch_threads: int,
) -> None:
    """Print ONE JSON line: medians over the timed steps, the phases' breakdown and peak memory.

    Args:
        system: the baseline's name.
        precision: ``fp32`` or ``bf16``.
        rows: one dict per timed step, with ``step_s``, ``tokens_per_s``, ``reward_mean``,
            ``cpu_util``, ``loadavg_1m`` and each of ``phases``.
        phases: the keys of ``rows`` that make the breakdown.
        warmup: untimed steps run before ``rows``.
        workload: what one step does.
        versions: library versions (python's is added).
        torch_threads: torch's intra-op threads.
    """
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result = {
        "system": system,
        "precision": precision,
        "tokens_per_s": round(med["tokens_per_s"], 2),
        "s_per_step": round(med["step_s"], 3),
        # each phase's median over the timed steps (they need not add up to s_per_step)
        "breakdown_s": {k: round(med[k], 3) for k in phases},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss, whole process",
        "min_s_per_step": round(min(r["step_s"] for r in rows), 3),
        # contention indicators (the machine is shared): this process's CPU use over a step
        # (about torch_threads when it has the cores to itself) and the 1-min load
        "cpu_util_median": round(med["cpu_util"], 2),
        "loadavg_1m_max": round(max(r["loadavg_1m"] for r in rows), 2),
        "per_step": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "reward_mean_per_step": [round(r["reward_mean"], 4) for r in rows],
        "reward_mean": round(statistics.fmean(r["reward_mean"] for r in rows), 4),
        "timed_steps": len(rows),
        "warmup_steps": warmup,
        "workload": workload,
        "versions": {**versions, "python": platform.python_version()},
        "torch_threads": torch_threads,
    }
    print(json.dumps(result), flush=True)
