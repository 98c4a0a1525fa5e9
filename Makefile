# Two commands for a new user: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all dist dist-check lint typecheck unit slow bench bench-quick docs docs-serve clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "conngrpc needs Python 3.10 or newer; $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,docs]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m conngrpc demo

# make test: ruff, mypy and the tests without the slow tier (about 3 minutes on 2 cores).
test: lint typecheck unit

# pytest on every supported Python found (PYTHON310=... style overrides, python3.X on
# PATH, or pyenv), each in its own .venv-3.X, every test included, the slow tier too
# (tests marked slow: scenarios of more than about 10 s); lint and typecheck run once.
# Then the packaging: the distributions' contents, and on each of those Pythons the
# wheel installed into a fresh venv runs the demo (tools/check_dist.py). Before them,
# the benchmarks' smoke run, once.
test-all: lint typecheck docs dist bench-quick
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

# The documentation site (mkdocs.yml), built strictly into site/: a broken link or
# anchor, a reference that does not resolve or a docstring that does not render fails
# it. Then every built page is fetched over loopback and each internal link on it must
# resolve (tools/check_site.py). MkDocs' notice about its 2.0 is silenced: the site
# pins MkDocs 1 (pyproject.toml's docs extra). Never --quiet: it drops the warnings before
# --strict counts them, and the build passes (tests/test_docs_build.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/python tools/check_site.py site

# The site on 127.0.0.1:8000, rebuilt as docs/, the docstrings or the changelog change.
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

# Benchmarks never run inside `make test`; `make test-all` (so CI) runs bench-quick, a
# smoke run that checks every benchmark still reports (bench/smoke.py), not its numbers.
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.smoke

clean:
	rm -rf $(VENV) $(VENV)-3.* build dist site *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
