# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv jars lint typecheck unit integration contract clean

$(STAMP): pyproject.toml $(wildcard pipeline/*.c pipeline/*.h pipeline/*/*.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The broker jars come from Maven Central through pipeline/kafka_runtime/pom.xml (cached).
jars: venv
	$(BIN)/python -c "from pipeline import kafka_local as k; from pipeline.settings import get_settings as g; s = g(); print(k.ensure_jars(k.layout(s.home, s.kafka_port)))"

demo: jars
	$(BIN)/traverz demo

lint: venv
	$(BIN)/ruff check pipeline topologies tests

typecheck: venv
	$(BIN)/mypy

# The tests start their own broker on a free port and stop it at the end.
test: jars lint typecheck
	$(BIN)/pytest -q --durations=15

unit: venv
	$(BIN)/pytest -q tests/unit tests/contract

integration: jars
	$(BIN)/pytest -q tests/integration

clean:
	rm -rf $(VENV) .traverz .pytest_cache .mypy_cache .ruff_cache

# The /map page's browser library (h3-js from npm, pinned by web/package-lock.json), copied where the
# push worker serves it: nothing is fetched from the internet at run time.
MAP_H3 := pipeline/push/static/vendor/h3-js.umd.js
.PHONY: web chromium
$(MAP_H3): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	mkdir -p $(dir $(MAP_H3))
	cp web/node_modules/h3-js/dist/h3-js.umd.js $(MAP_H3)
web: $(MAP_H3)

# Debian's chromium for the /map page test (driven by playwright with executable_path; run as root)
chromium:
	command -v chromium || (apt-get update && apt-get install -y chromium)

test: web chromium
