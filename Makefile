# Every target that runs code depends on .venv/.installed, so a fresh clone
# needs nothing but Python 3.11+ and `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The embedded Kafka broker's jars, fetched once from Maven Central (infra/kafka/pom.xml).
KAFKA_LIBS := infra/kafka/target/kafka-libs
KAFKA := $(KAFKA_LIBS)/.complete

.PHONY: demo test lint bench up down status clean install simulate

# _native.c is compiled by the install, so a change to it installs again.
$(STAMP): pyproject.toml schemas/_impl/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A new pom fetches into an empty folder, so no jar of an older Kafka stays on the classpath.
$(KAFKA): infra/kafka/pom.xml
	rm -rf $(KAFKA_LIBS)
	cd infra/kafka && mvn -B -q dependency:copy-dependencies
	sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' infra/kafka/pom.xml > $@

# The dashboard's browser test drives Debian's chromium: the browser comes from the
# machine's packages, never from a test tool's own download.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null)

install: $(STAMP) $(KAFKA)

demo: $(STAMP) $(KAFKA)
	$(BIN)/onceflow demo

# Two workers, each with its own embedded broker: most integration tests wait on the log,
# so two of them share the CI machine's two cores well.
test: $(STAMP) $(KAFKA) $(CHROMIUM)
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --durations=30

# mypy reads the package as it is installed, `onceflow.*`: a tree of links to the folders.
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/onceflow
	for f in infra/_root/*.py; do ln -s ../../../$$f $(TYPECHECK)/onceflow/$$(basename $$f); done
	for d in schemas streams agents billing autoscaler infra; do ln -s ../../../$$d $(TYPECHECK)/onceflow/$$d; done
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy -p onceflow
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy bench

# The deterministic simulation alone, as deep as asked: `make simulate SEEDS=1000000`.
SEEDS ?= 100000
FIRST ?= 0
simulate: $(STAMP)
	$(BIN)/python -m tests.simulation --seeds $(SEEDS) --first $(FIRST)

bench: $(STAMP) $(KAFKA)
	$(BIN)/python -m bench.run --out bench/results.json

up: $(STAMP) $(KAFKA)
	$(BIN)/onceflow up

down: $(STAMP)
	$(BIN)/onceflow down

status: $(STAMP)
	$(BIN)/onceflow status

clean:
	-$(BIN)/onceflow down 2>/dev/null
	rm -rf $(VENV) .onceflow build *.egg-info .mypy_cache .ruff_cache .pytest_cache infra/kafka/target
	rm -f schemas/_impl/_native.*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
