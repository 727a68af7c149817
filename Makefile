# `make run` and `make test` do all the set-up on a fresh machine: they create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Telemetry off for every tool the pipeline drives; PASSIVE stops PyTorch's idle threads from
# busy-waiting, which made training steps several times slower on shared CPUs.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export OMP_WAIT_POLICY := PASSIVE

.PHONY: run test bench lint ui clean-venv

run: $(STAMP)  ## the whole trial (uses the bundled sample when data/raw is empty)
	$(BIN)/ldm run

test: $(STAMP)  ## the test suite, CPU only
	$(BIN)/python -m pytest

bench: $(STAMP)  ## benchmarks (not part of the tests)
	$(BIN)/python bench/validate_throughput.py

lint: $(STAMP)
	$(BIN)/ruff check ldm flows tests bench

ui: $(STAMP)
	$(BIN)/ldm ui

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
