# Every target that runs code depends on .venv/.installed, so a fresh clone
# needs nothing but Python 3.11+ and `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench up down status clean install

# _native.c is compiled by the install, so a change to it installs again.
$(STAMP): pyproject.toml schemas/_impl/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/onceflow demo

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas streams agents billing autoscaler infra bench

bench: $(STAMP)
	$(BIN)/python -m bench.run --out bench/results.json

up: $(STAMP)
	$(BIN)/onceflow up

down: $(STAMP)
	$(BIN)/onceflow down

status: $(STAMP)
	$(BIN)/onceflow status

clean:
	-$(BIN)/onceflow down 2>/dev/null
	rm -rf $(VENV) .onceflow build *.egg-info .mypy_cache .ruff_cache .pytest_cache
	rm -f schemas/_impl/_native.*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
