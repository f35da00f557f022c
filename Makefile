# fruitcloud: `make demo` runs the pipeline against a local S3; `make test` is what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE := .cache

# Offline source of the s3a jars: the PyPI sdist of sagemaker-pyspark ships
# hadoop-aws 3.3.1 + aws-java-sdk-bundle 1.11.901, which work with Spark 3.5.3's
# Hadoop 3.3.4 client (see README, "s3a jars"). Real hosts use the matched pair.
SAGEMAKER_SDIST := sagemaker_pyspark-1.4.5.tar.gz
SAGEMAKER_SDIST_SHA256 := 05ca2d5081d7138ce29a8fb0a9cba077f28c825288ed07aed46a82e63c0bf1fb
HADOOP_AWS_SHA256 := 6be50ad8a8b445d2802381b085b2a3ede5c29d353450a6a21f16b2fefa962b6e
AWS_SDK_BUNDLE_SHA256 := b87175b32a16544cc1b37cf40390eb375833e62bed67f8ce6cde4b7ad6429ead
JARS := $(CACHE)/jars/hadoop-aws-3.3.1.jar $(CACHE)/jars/aws-java-sdk-bundle-1.11.901.jar

.PHONY: help venv jars demo test test-fast test-python lint bench clean

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements/job.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt
	touch $@

venv: $(BIN)/.installed ## Create the virtualenv with pinned dependencies

$(CACHE)/$(SAGEMAKER_SDIST): | $(BIN)/.installed
	mkdir -p $(CACHE)
	$(BIN)/pip download --quiet --no-deps --no-binary :all: --dest $(CACHE) sagemaker-pyspark==1.4.5
	echo "$(SAGEMAKER_SDIST_SHA256)  $@" | sha256sum --check --quiet

$(JARS) &: $(CACHE)/$(SAGEMAKER_SDIST)
	mkdir -p $(CACHE)/jars
	tar -xzf $< -C $(CACHE)/jars --strip-components=3 \
		sagemaker_pyspark-1.4.5/deps/jars/hadoop-aws-3.3.1.jar \
		sagemaker_pyspark-1.4.5/deps/jars/aws-java-sdk-bundle-1.11.901.jar
	echo "$(HADOOP_AWS_SHA256)  $(CACHE)/jars/hadoop-aws-3.3.1.jar" | sha256sum --check --quiet
	echo "$(AWS_SDK_BUNDLE_SHA256)  $(CACHE)/jars/aws-java-sdk-bundle-1.11.901.jar" | sha256sum --check --quiet
	touch $(JARS)

jars: $(JARS) ## Extract the pinned s3a jars (checksummed)

demo: venv jars ## Run the job on the Fruits-360 sample against a local S3 (moto)
	PYTHONPATH=jobs $(BIN)/python -m harness.demo

lint: venv ## ruff, yamllint, ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint --profile production

test-python: venv jars
	$(BIN)/pytest

test: lint test-python ## Linters and the whole test suite (what CI runs)

test-fast: lint venv jars ## Linters plus the job's unit and end-to-end tests (a few minutes; no Ansible, no Molecule)
	$(BIN)/pytest -m "not molecule and not slow" tests/jobs tests/test_emr.py

clean: ## Remove build outputs (keeps the venv and the jar cache)
	rm -rf build reports spark-warehouse .pytest_cache

bench: venv jars ## Benchmark: limit vs ours vs the notebook pipeline, scaling, memory (writes bench/results/)
	PYTHONPATH=jobs $(BIN)/python -m bench.run_bench
