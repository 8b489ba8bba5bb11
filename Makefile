# Set-up and the two jobs of README.md: `make demo` and `make test` (lint, docs, tests).
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
# mkdocs-material prints a banner about its successor on every build.
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint docs wheel

# What the demo needs: dior-search and its runtime dependencies, nothing else.
$(VENV)/.installed-runtime: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e .
	touch $@

# The development tools on top: pytest, ruff, mypy, import-linter, playwright, ...
$(VENV)/.installed-dev: $(VENV)/.installed-runtime
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.installed-runtime
	$(BIN)/dior-search demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site, built strictly (a broken link or anchor fails), into build/site/;
# and the figures on its pages checked against benchmarks/results/.
docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python scripts/docs_figures.py --check

test: lint docs
	$(BIN)/pytest

# The wheel (and nothing else: no dependency wheels) in dist/, not the repository root.
wheel: $(VENV)/.installed-runtime
	$(BIN)/python -m pip wheel --no-deps -w dist .
