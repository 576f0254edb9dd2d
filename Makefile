# Two entry points (README): `make demo` runs the main job on the embedded default, `make test` the suite.
# Both create .venv on a fresh machine with Python 3.11 and install only what they need: `make demo` the
# core package (no torch, transformers or libtpu), `make test` the test extras as well (.[test,tpu,beam,wandb]).
# Day to day: `make test-quick` (tests/unit), `make test-fast` (tests/unit + tests/parity, a few minutes),
# `make lint` / `make format` (ruff, configured in pyproject.toml). CI (.ci/run) runs `make lint` + `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CORE_STAMP := $(VENV)/.installed-core
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export JAX_PLATFORMS ?= cpu
# test processes (pytest-xdist; a test file stays on one worker, so its module fixtures are built once)
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

.PHONY: demo test test-quick test-fast lint format install install-test clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(CORE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(CORE_STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,tpu,beam,wandb]"  # tpu: the offline TPU AOT compile test; beam: prepare --runner=beam; wandb: the real offline W&B run
	touch $(STAMP) $(CORE_STAMP)

$(LINT_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[lint]"
	touch $(LINT_STAMP)

install: $(CORE_STAMP)

install-test: $(STAMP)

demo: $(CORE_STAMP)
	$(PY) -m dsvl_jax.demo --config=experiments/demo.py:tiny

test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) tests

test-quick: $(STAMP)
	$(PY) -m pytest -q $(XDIST) tests/unit

test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) tests/unit tests/parity

lint: $(LINT_STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(LINT_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .cache build *.egg-info
