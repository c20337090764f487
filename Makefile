# Developer entry points. Everything runs inside $(VENV), created on demand;
# stamp files make repeated runs cheap and redo only what changed.

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=

BIN := $(VENV)/bin
PROTOS := $(wildcard protos/riskd/v1/*.proto)
INSTALL_STAMP := $(VENV)/.riskd-installed
GEN_STAMP := riskd/v1/.generated
# riskd/core compiled in place by mypyc (setup.py); RISKD_PURE=1 runs the .py sources.
CORE_SOURCES := $(filter-out riskd/core/__init__.py,$(wildcard riskd/core/*.py))
CORE_STAMP := riskd/core/.compiled
# Also run with RISKD_PURE=1 by `make test`: the core's tests and the tests that
# compare a daemon's state digest with the core's, so the two cannot drift.
PURE_TESTS ?= tests/core tests/api/test_daemon_e2e.py tests/api/test_waterfall_e2e.py
# pytest-xdist processes for `make test` (each test file on one worker: see
# tests/conftest.py); PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: setup compile gen run test lint lint-proto bench demo clean distclean

setup: $(INSTALL_STAMP) $(GEN_STAMP) $(CORE_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The editable install skips the compile (RISKD_PURE_BUILD): $(CORE_STAMP) does it
# in place with the venv's pinned mypy, again whenever a core module changes.
$(INSTALL_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	RISKD_PURE_BUILD=1 $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(CORE_STAMP): $(CORE_SOURCES) setup.py $(INSTALL_STAMP)
	$(BIN)/python setup.py --quiet build_ext --inplace --parallel 2
	touch $@

# The core compiled now, whatever the stamp says.
compile: $(INSTALL_STAMP)
	$(BIN)/python setup.py --quiet build_ext --inplace --parallel 2 --force
	touch $(CORE_STAMP)

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
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)
	RISKD_PURE=1 $(BIN)/python -m pytest -q $(XDIST) $(PURE_TESTS)

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
	rm -f riskd/core/*.so $(CORE_STAMP)
	find riskd clients tests benchmarks -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
