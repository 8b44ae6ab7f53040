# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Set up, queue the example posts to go out now, and run the service (SQLite, example config).
run: $(STAMP)
	$(BIN)/crosspost db upgrade
	$(BIN)/crosspost add --now config/examples/
	$(BIN)/crosspost run

## Set up and run every check: lint, types, the whole test suite (SQLite and PostgreSQL).
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src adapters
	$(BIN)/pytest -n 2 -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy src adapters

## Debian's Chromium for the browser test (needs root or sudo; skipped if already there).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

bench: $(STAMP)
	$(BIN)/python benchmarks/burst.py
	$(BIN)/python benchmarks/idle_precision.py
	$(BIN)/python benchmarks/queue_scale.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache
