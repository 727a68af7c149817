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

# The CPU benchmarks that take a few minutes together. Not run here: bench/memory.py (peak RSS,
# 20+ minutes), bench/trial_time.py (the default trial, twice) and bench/gpu_check.sh (a GPU
# host). Every script has --smoke, which tests/test_bench.py runs.
bench: $(STAMP)  ## the quick CPU benchmarks, one after the other (not part of the tests)
	@echo "== bench/validate_throughput.py: the validate scan against a plain decode loop"
	$(BIN)/python bench/validate_throughput.py
	@echo "== bench/dit_throughput.py: LightningDiT training steps against diffusers' DiT"
	$(BIN)/python bench/dit_throughput.py
	@echo "== bench/tokenizer_throughput.py: tokenizer encode+decode against diffusers' AutoencoderKL"
	$(BIN)/python bench/tokenizer_throughput.py
	@echo "== bench/fd_bootstrap.py: Frechet distance from the rows against the covariances, and its bootstrap"
	$(BIN)/python bench/fd_bootstrap.py
	@echo "== bench/feature_throughput.py: evaluation features in CPU micro-batches against whole batches"
	$(BIN)/python bench/feature_throughput.py
	@echo "== not run here: bench/memory.py, bench/trial_time.py, bench/gpu_check.sh (see each)"

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
