# hotswap — the two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv on first use and install the pinned dependencies into it.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# The test run is CPU-only and single-threaded: two OpenMP threads on a busy 2-core box are
# slower than one.
export OMP_NUM_THREADS ?= 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install test test-loaded lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing hotswap and its pinned dependencies into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install --quiet -e ".[dev]" 2>&1 | { grep -v '^WARNING: Location' || true; }
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check components tasks flows tests bench deployments

# Three test processes on two cores: about an eighth of the suite waits on servers and
# subprocesses, and a third process fills those waits (9.7 min for pytest on an idle 2-core box;
# with two processes the same suite took about a minute longer when last compared). A test file stays on one process, so the session and module fixtures it
# shares (a Prefect server, a home) are built once per process. Files go out longest first
# (tests/fixtures/ordering.py), so xdist must keep that order.
TEST_WORKERS ?= 3

test: lint
	$(BIN)/pytest -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The busy-machine check: the e2e demo test with every core kept busy by a busy loop (bench/loaded.py).
# Not part of `make test` (longer than its 12-minute budget leaves room for): `CI_LOADED=1 .ci/run`.
test-loaded: install
	$(BIN)/python -m bench.loaded

demo: install
	$(BIN)/hotswap demo

bench: install
	$(BIN)/python -m bench.compat
	$(BIN)/python -m bench.quant
	$(BIN)/python -m bench.backfill
	$(BIN)/python -m bench.metrics
	$(BIN)/python -m bench.calibration
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.streaming
	$(BIN)/python -m bench.dask

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
