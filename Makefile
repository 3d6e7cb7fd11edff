# modelfleet: run `make` (or `make help`) to list targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
INSTALLED := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; printf "modelfleet make targets:\n"} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install -e '.[runtime,operator,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

.PHONY: install
install: $(INSTALLED) ## Create .venv and install modelfleet with all extras (torch included)

.PHONY: lint
lint: install ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

.PHONY: fmt
fmt: install ## Format the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: test
test: install cluster-build lint ## Install everything, build the local cluster binaries, lint, run all tests
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install cluster-build ## Run the unit tests (the chart tests need the helm that cluster-build makes)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-runtime
test-runtime: install ## Run the runtime tests (real process, real HTTP)
	$(BIN)/pytest tests/runtime $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: install cluster-build ## Run the tests against the real local control plane
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

.PHONY: cluster-build
cluster-build: ## Build (or reuse cached) kube-apiserver, etcd, kwok, kubectl, helm, metrics-server from Go modules
	hack/cluster/build

.PHONY: cluster-up
cluster-up: cluster-build ## Start the local control plane with simulated GPU nodes
	hack/cluster/up

.PHONY: cluster-down
cluster-down: ## Stop and delete the local control plane
	hack/cluster/down

.PHONY: dev
dev: install ## The main job: serve the example model locally (see README)
	hack/dev

.PHONY: dev-down
dev-down: ## Stop what `make dev` started
	hack/dev-down

.PHONY: bench-runtime
bench-runtime: install ## Benchmark the runtime against raw torch
	$(BIN)/python bench/runtime.py

.PHONY: clean
clean: ## Remove the virtualenv and caches (not the cluster binary cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

.PHONY: serve-example
serve-example: install ## Build the example model and serve it with the runtime (no cluster)
	hack/serve-example

.PHONY: chart-sync
chart-sync: ## Copy the generated CRDs from crds/ into the Helm chart (a test checks they match)
	rm -f charts/modelfleet/files/crds/*.yaml
	cp crds/*.yaml charts/modelfleet/files/crds/
