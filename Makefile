# fruitcloud: `make demo` runs the pipeline against a local S3; `make test` is what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE := .cache

# s3a jars for local runs: the s3a_jars role itself, on the controller (same
# Maven coordinates and sha256 pins as on the hosts).
JARS_STAMP := $(CACHE)/jars/.fetched

.PHONY: help venv jars demo test test-fast test-unit test-python molecule lint bench clean

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements/job.txt requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps --editable .
	touch $@

venv: $(BIN)/.installed ## Create the virtualenv with pinned dependencies

$(JARS_STAMP): $(BIN)/.installed scripts/fetch_s3a_jars.yml $(wildcard roles/s3a_jars/*/main.yml)
	$(BIN)/ansible-playbook -i localhost, scripts/fetch_s3a_jars.yml
	touch $@

jars: $(JARS_STAMP) ## Download the pinned s3a jars with the s3a_jars role (sha256-checked)

demo: venv jars ## Run the job on the Fruits-360 sample against a local S3 (moto)
	$(BIN)/python -m harness.demo

lint: venv ## ruff, yamllint, ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint --profile production

# Two workers on two cores: most tests wait on a JVM, SSH or a container, not on a core.
PYTEST_WORKERS ?= 2

test-python: venv jars
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not molecule"

test: lint test-python ## Linters and the whole test suite (what CI runs)

test-unit: venv ## The tests that need no Spark, moto or container (about 2 min)
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "not spark and not moto and not container and not slow"

test-fast: lint venv jars ## Linters plus the job's unit and end-to-end tests (a few minutes; no Ansible, no Molecule)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not container and not slow" tests/jobs tests/test_emr.py

molecule: venv jars ## Molecule's default scenario (converge, idempotence, verify) on the Debian 13 EC2 stand-in
	$(BIN)/pytest -m molecule tests/molecule

clean: ## Remove build outputs (keeps the venv and the jar cache)
	rm -rf build reports spark-warehouse .pytest_cache

$(BIN)/.bench-installed: $(BIN)/.installed requirements/bench.txt
	$(BIN)/pip install --quiet -r requirements/bench.txt
	touch $@

bench: venv jars $(BIN)/.bench-installed ## Benchmark: CNN runtimes, limit vs ours vs the notebook pipeline, scaling, memory (writes bench/results/)
	$(BIN)/python -m bench.runtimes
	$(BIN)/python -m bench.run_bench
