# Set-up and the two jobs of README.md: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint wheel

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

test: lint
	$(BIN)/pytest

# The wheel (and nothing else: no dependency wheels) in dist/, not the repository root.
wheel: $(VENV)/.installed-runtime
	$(BIN)/python -m pip wheel --no-deps -w dist .
