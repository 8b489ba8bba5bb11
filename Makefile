# Set-up and the two jobs of README.md: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint

$(BIN)/dior-search: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $@

demo: $(BIN)/dior-search
	$(BIN)/dior-search demo

lint: $(BIN)/dior-search
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest
