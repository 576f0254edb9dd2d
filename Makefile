# Two entry points (README): `make demo` runs the main job on the embedded default, `make test` the suite.
# Both create .venv and install what they need on a fresh machine with Python 3.11.
# Day to day: `make test-quick` (unit tests), `make lint` / `make format` (ruff, configured in pyproject.toml).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export JAX_PLATFORMS ?= cpu

.PHONY: demo test test-quick lint format install clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,tpu,beam]"  # tpu: the offline TPU AOT compile test; beam: prepare --runner=beam
	touch $(STAMP)

$(LINT_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[lint]"
	touch $(LINT_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m dsvl_jax.demo --config=experiments/demo.py:tiny

test: $(STAMP)
	$(PY) -m pytest -q tests

test-quick: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(LINT_STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(LINT_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
