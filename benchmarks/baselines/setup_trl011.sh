#!/usr/bin/env bash
# Baseline environment for benchmarks/baselines/trl011_ppo.py: trl 0.11.4's classic
# value-head PPOTrainer on transformers 4.46, in a venv of its own (never the project's
# .venv, whose transformers 5.x it cannot share). Idempotent: a second run only checks.
#
#   bash benchmarks/baselines/setup_trl011.sh            # -> benchmarks/baselines/.venv-trl011
#   VENV=/some/where bash benchmarks/baselines/setup_trl011.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$HERE/.venv-trl011}"
STAMP="$VENV/.trl011-stamp"
REQS="$HERE/requirements-trl011.txt"

# torch pinned to the local CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
CONSTRAINTS="$ROOT/constraints.txt"
grep -q '^torch==2.13.0' "$CONSTRAINTS" || { echo "expected torch==2.13.0 in $CONSTRAINTS" >&2; exit 1; }

# The stamp holds the requirements' checksum: editing the requirements re-installs.
WANT="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "trl 0.11.4 venv already set up: $VENV"
else
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    echo "installing trl 0.11.4 + transformers 4.46 into $VENV ..."
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    "${PIP[@]}" install -c "$CONSTRAINTS" -r "$REQS"
    echo "$WANT" > "$STAMP"
fi
"$VENV/bin/python" -I - <<'PY'
import importlib.metadata as md
import warnings; warnings.filterwarnings("ignore")
# Everything the baseline imports, imported offline.
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer  # noqa: F401
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: F401
for name in ("trl", "transformers", "torch", "accelerate", "numpy", "vaderSentiment"):
    print(f"{name}=={md.version(name)}")
assert md.version("trl") == "0.11.4" and md.version("torch").startswith("2.13.0")
assert md.version("transformers").startswith("4.46.")
PY
