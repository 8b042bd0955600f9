# Everything runs from the project's own virtualenv, built from pyproject.toml on first use
# (a clean clone, as in CI, has no .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: rebuilt whenever pyproject.toml changes
VENV_STAMP := $(VENV)/.installed

.PHONY: venv test lint dev bench clean

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

test: $(VENV_STAMP)
	bash scripts/ensure-wal2json.sh
	bash scripts/ensure-promtool.sh
	$(BIN)/python -m pytest -q

lint: $(VENV_STAMP)
	$(BIN)/ruff check
	$(BIN)/mypy
	$(BIN)/lint-imports

dev: $(VENV_STAMP)
	$(BIN)/cdc-bridge dev --demo

bench: $(VENV_STAMP)
	@if [ -d bench ]; then $(BIN)/python -m bench; else echo "bench: no bench/ package yet"; fi

# Leaves .venv alone (slow to rebuild); remove it by hand to start from scratch.
clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .devstack
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
