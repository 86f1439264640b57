# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv jars lint typecheck unit integration contract clean

$(STAMP): pyproject.toml
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
	$(BIN)/pytest -q

unit: venv
	$(BIN)/pytest -q tests/unit tests/contract

integration: jars
	$(BIN)/pytest -q tests/integration

clean:
	rm -rf $(VENV) .traverz .pytest_cache .mypy_cache .ruff_cache
