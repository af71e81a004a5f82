# llmflow: `make demo` runs the pipeline on the built-in corpus, `make test` runs the tests.
# Both create or update .venv first, with uv (installed into the venv by pip): it installs and
# byte-compiles in parallel, in half pip's time on two cores (116 s -> 55 s for the pipeline's
# requirements; benchmarks/RESULTS.md). PyTorch is installed before the project so that the CPU
# build stays (the project only asks for torch>=2.4); override TORCH_SPEC / TORCH_INDEX on a
# machine that needs another build, e.g. TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu.
# pip's PIP_FIND_LINKS (a folder of local wheels) is passed on to uv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
UV_INSTALL = $(PY) -m uv pip install -q --python $(PY) --compile-bytecode $(foreach d,$(PIP_FIND_LINKS),--find-links $(d))
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
	$(PIP) install -q "uv>=0.9,<1"
	$(PY) -c "import torch" 2>/dev/null || $(UV_INSTALL) $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(UV_INSTALL) -e .
	@touch $@

$(VENV)/.installed: $(VENV)/.installed-core
	$(UV_INSTALL) -e ".[dev]"
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
