# wmpo: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint format proto bench-collect clean

setup: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	./scripts/system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e clients/python
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/wmpo demo

test: setup
	$(VENV)/bin/pytest -x --durations=10

lint: setup
	$(VENV)/bin/ruff check wmpo services clients/python tests scripts

format: setup
	$(VENV)/bin/ruff check --fix wmpo services clients/python tests scripts

proto: setup
	./scripts/gen_proto.sh

bench-collect: setup
	$(PY) scripts/bench_collect.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
