# shoplake — the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE := data/rees46/2019-Oct-first-3h.csv

.DEFAULT_GOAL := help
.PHONY: help install demo test lint bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create the virtualenv and install the pinned stack

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "shoplake needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

demo: install ## Run the whole pipeline on the bundled REES46 sample and print where the outputs are
	$(BIN)/shoplake pipeline --events $(SAMPLE)

test: install ## Run the test suite (pytest's "no tests collected" counts as a pass)
	$(BIN)/pytest -q; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy shoplake spark_jobs expectations

bench: install ## Run the benchmarks under bench/ (each against its baseline, results in bench/results/)
	$(BIN)/python -m bench.storage_write --rows 2000000
	$(BIN)/python -m bench.etl --events 1000000 --events 10000000

clean: ## Remove the local lake, reports and caches (not the virtualenv)
	rm -rf .shoplake spark-warehouse metastore_db derby.log .pytest_cache
