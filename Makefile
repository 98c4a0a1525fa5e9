# Two commands for a new user: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint typecheck unit bench bench-quick clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "conngrpc needs Python 3.10 or newer; $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m conngrpc demo

test: lint typecheck unit

# pytest on every supported Python found (PYTHON310=... style overrides, python3.X on
# PATH, or pyenv), each in its own .venv-3.X; lint and typecheck run once, in .venv.
test-all: lint typecheck
	$(PYTHON) tools/test_all.py

lint: $(STAMP)
	$(BIN)/ruff check conngrpc tests bench examples tools
	$(BIN)/ruff format --check conngrpc tests bench examples tools

typecheck: $(STAMP)
	$(BIN)/mypy --strict conngrpc

unit: $(STAMP)
	$(BIN)/pytest tests

# Benchmarks never run inside `make test` (a smoke test runs bench-quick's code only).
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) $(VENV)-3.* build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
