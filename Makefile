# shoplake — the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE := data/rees46/2019-Oct-first-3h.csv
# Airflow, local: SQLite metadata under .shoplake/airflow, LocalExecutor, this repository's dags/
AIRFLOW_ENV := AIRFLOW_HOME="$(CURDIR)/.shoplake/airflow" AIRFLOW__CORE__DAGS_FOLDER="$(CURDIR)/dags" \
	AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__EXECUTOR=LocalExecutor

.DEFAULT_GOAL := help
.PHONY: help install demo airflow-init airflow-ui pipeline test lint bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create the virtualenv and install the pinned stack

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "shoplake needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

demo: airflow-init ## Run the daily DAG through Airflow (airflow dags test) on the bundled REES46 sample; print where outputs are
	$(AIRFLOW_ENV) $(BIN)/airflow dags test shoplake_daily 2019-10-01 \
		--conf '{"events": "$(CURDIR)/$(SAMPLE)", "date": "2019-10-01"}' > .shoplake/demo-airflow.log 2>&1 \
		|| { tail -n 60 .shoplake/demo-airflow.log; echo "the DAG run failed; full log: .shoplake/demo-airflow.log"; exit 1; }
	@sed -nE 's/^[^ ]+ \[[a-z]+ *\] (.*) \[shoplake\.orchestration\].*/\1/p' .shoplake/demo-airflow.log
	@echo "Airflow log of the whole run: .shoplake/demo-airflow.log"
	$(BIN)/shoplake outputs

airflow-init: install ## Migrate Airflow's local database and create the pools the DAGs use
	@mkdir -p .shoplake/airflow
	$(AIRFLOW_ENV) $(BIN)/python -m shoplake.airflow_setup

airflow-ui: airflow-init ## Start Airflow locally (API server + UI on :8080, scheduler, DAG processor); log in as admin
	$(AIRFLOW_ENV) AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True $(BIN)/airflow standalone

pipeline: install ## The same stages without Airflow: `shoplake pipeline` on the sample
	$(BIN)/shoplake pipeline --events $(SAMPLE)

test: install ## Run the test suite (pytest's "no tests collected" counts as a pass)
	$(BIN)/pytest -q; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

lint: install ## ruff (lint and format) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shoplake spark_jobs expectations feature_repo

bench: install ## Run the benchmarks under bench/ (each against its baseline, results in bench/results/)
	$(BIN)/python -m bench.storage_write --rows 2000000
	$(BIN)/python -m bench.etl --events 1000000 --events 10000000

clean: ## Remove the local lake, reports and caches (not the virtualenv)
	rm -rf .shoplake spark-warehouse metastore_db derby.log .pytest_cache
