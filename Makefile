# Needs only python3 (and make). Everything runs from ./.venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint clean-venv

# The patched template goes to a file (ignored, in the venv), so the diff is the one thing printed, once.
demo: $(VENV)/.installed-base
	$(VENV)/bin/templatekit patch examples/chatml_example.jinja --diff -o $(VENV)/chatml_example.patched.jinja

# One test process per core (pytest-xdist, at most 4: each holds the tokenizers and the corpus it uses), each
# module in one process; with `--dist loadfile` the modules that read the session corpus share one
# (tests/conftest.py), which test-fast, without the corpus tests, has no use for. PARALLEL= runs in this process.
PARALLEL ?= -n auto --maxprocesses 4 --dist loadfile
FAST_PARALLEL ?= $(if $(PARALLEL),-n auto --maxprocesses 4 --dist loadscope)

# Lint (ruff, pinned in the test extra), the layer contracts (import-linter, see pyproject.toml), then the tests
# and the package's doctests (pytest --doctest-modules, set in pyproject.toml).
test: lint
	$(PY) -m pytest -q $(PARALLEL)

# The inner loop while editing (under a minute): every test but those marked corpus, subprocess, e2e or slow
# (pyproject.toml lists the markers), and no lint. `make test` before a commit runs everything.
FAST := not corpus and not subprocess and not e2e and not slow
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "$(FAST)" $(FAST_PARALLEL)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when the packaging (pyproject.toml, setup.py) changes.
$(VENV)/.installed-base: pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@ $(VENV)/.installed-base

clean-venv:
	rm -rf $(VENV)
