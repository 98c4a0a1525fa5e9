# Two commands for a new user: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all dist dist-check lint typecheck unit slow bench bench-quick clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "conngrpc needs Python 3.10 or newer; $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m conngrpc demo

# make test: ruff, mypy and the tests without the slow tier (under 3 minutes on 2 cores).
test: lint typecheck unit

# pytest on every supported Python found (PYTHON310=... style overrides, python3.X on
# PATH, or pyenv), each in its own .venv-3.X, every test included, the slow tier too
# (tests marked slow: scenarios of more than about 10 s); lint and typecheck run once.
# Then the packaging: the distributions' contents, and on each of those Pythons the
# wheel installed into a fresh venv runs the demo (tools/check_dist.py). Before them,
# the benchmarks' smoke run, once.
test-all: lint typecheck dist bench-quick
	$(PYTHON) tools/test_all.py --dist dist

# The sdist and the wheel, in dist/, which twine must pass. build and twine come with
# the test extra, in .venv.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist .
	$(BIN)/twine --no-color check --strict dist/*

# test-all's packaging check alone, on $(PYTHON) only: about a minute.
dist-check: dist
	$(PYTHON) tools/check_dist.py dist --python $(PYTHON)

lint: $(STAMP)
	$(BIN)/ruff check conngrpc tests bench examples tools
	$(BIN)/ruff format --check conngrpc tests bench examples tools

typecheck: $(STAMP)
	$(BIN)/mypy --strict conngrpc

# Every test but the slow tier (-m "not slow"), which make test-all runs; make slow runs
# that tier alone, here.
unit: $(STAMP)
	$(BIN)/pytest -m "not slow" tests

slow: $(STAMP)
	$(BIN)/pytest -m slow tests

# Benchmarks never run inside `make test`; `make test-all` (so CI) runs bench-quick, a
# smoke run that checks every benchmark still reports (bench/smoke.py), not its numbers.
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.smoke

clean:
	rm -rf $(VENV) $(VENV)-3.* build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
