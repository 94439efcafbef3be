# loadgen: `make run` sets itself up and runs the default profile; `make test` sets itself up
# and runs every check (format, lint, types, tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= profiles/default.toml

.PHONY: install sysdeps bench-sysdeps run test check fmt lint typecheck pytest bench clean

install: $(STAMP) sysdeps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,cluster]'
	touch $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

bench-sysdeps:
	@bash scripts/sysdeps.sh bench

run: install
	$(BIN)/loadgen run $(PROFILE)

test: install
	$(MAKE) --no-print-directory check

check: lint typecheck pytest

lint:
	$(BIN)/ruff format --check loadgen tests
	$(BIN)/ruff check loadgen tests

fmt:
	$(BIN)/ruff format loadgen tests
	$(BIN)/ruff check --fix loadgen tests

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest -q

bench: install bench-sysdeps
	$(BIN)/python -m loadgen.bench
	$(BIN)/python -m loadgen.bench.transport 20k 2

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
