# llmflow: `make demo` runs the pipeline on the built-in corpus, `make test` runs the tests.
# Both create or update .venv first. PyTorch is installed before the project so that pip keeps
# the CPU build (the project only asks for torch>=2.4); override TORCH_SPEC / TORCH_INDEX on a
# machine that needs another build, e.g. TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PRESET ?= demo
PYTEST_ARGS ?=

.PHONY: venv venv-core demo test lint format bench clean

# venv-core: what the pipeline needs (make demo); venv: that plus the test and benchmark tools.
venv-core: $(VENV)/.installed-core
venv: $(VENV)/.installed

$(VENV)/.installed-core: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.installed: $(VENV)/.installed-core
	$(PIP) install -q -e ".[dev]"
	@touch $@

# Exit code 3 is the gate rejecting the model: the demo ran end to end and printed why.
demo: venv-core
	@$(VENV)/bin/llmflow run --config $(PRESET); rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "demo: the pipeline ran end to end; the gate rejected the model (reasons above)."; \
	else exit $$rc; fi

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/pretrain.py

clean:
	rm -rf .llmflow .pytest_cache
