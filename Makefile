# Developer entry points. Everything runs inside $(VENV), created on demand;
# stamp files make repeated runs cheap and redo only what changed.

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=

BIN := $(VENV)/bin
PROTOS := $(wildcard protos/riskd/v1/*.proto)
INSTALL_STAMP := $(VENV)/.riskd-installed
GEN_STAMP := riskd/v1/.generated

.PHONY: setup gen run test lint lint-proto bench demo clean distclean

setup: $(INSTALL_STAMP) $(GEN_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Regenerate when a .proto, the generator, or the installed toolchain changes.
$(GEN_STAMP): $(PROTOS) clients/python/generate.py $(INSTALL_STAMP)
	$(BIN)/python clients/python/generate.py
	touch $@

gen: $(INSTALL_STAMP)
	$(BIN)/python clients/python/generate.py
	touch $(GEN_STAMP)

run: setup
	$(BIN)/riskd serve

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check riskd tests clients benchmarks
	$(BIN)/mypy riskd

# Needs npx (Node.js); buf itself comes from the npm registry.
lint-proto:
	npx --yes @bufbuild/buf lint
	npx --yes @bufbuild/buf format --diff --exit-code

# make bench QUICK=1: small sizes, a smoke run in about a minute.
bench: setup
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

# A replay of the built-in generated crash path (no price file needed); see docs/replay.md.
demo: setup
	$(BIN)/riskd replay --generated --out replay-out

clean:
	rm -rf riskd/v1 build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -rf *.egg-info clients/python/*.egg-info
	find riskd clients tests benchmarks -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
