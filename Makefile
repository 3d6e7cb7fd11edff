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
lint: install ## ruff (lint and format), strict mypy, the import-layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: fmt
fmt: install ## Format the code with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The slow preparations run side by side (pip and podman wait on the network and disk, Go on
# the CPU): on a fresh machine this saves the images' ~15 minutes of wall time.
.PHONY: test
test: ## Install everything, build the cluster binaries and the images, lint, run all tests (e2e: needs root)
	$(MAKE) --no-print-directory -j3 --output-sync=target test-prereqs
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-prereqs
test-prereqs: install cluster-build lint images min-versions

.PHONY: min-versions
min-versions: ## The operator's unit tests on the oldest dependency versions pyproject.toml allows
	operator/ci/min-versions

.PHONY: test-e2e
test-e2e: install cluster-build images ## Run the end-to-end tests on a real node (root; see docs/cluster.md)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

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

.PHONY: cluster-up-real
cluster-up-real: cluster-build images ## The local control plane plus one real node (kubelet + containerd; root)
	hack/cluster/up --real-node

.PHONY: cluster-down
cluster-down: ## Stop and delete the local control plane (and its real node)
	hack/cluster/down

.PHONY: node-deps
node-deps: ## Install the Debian packages images and the real node need (podman, containerd, runc, ...)
	hack/node/deps

.PHONY: images
images: node-deps ## Build the operator and runtime images (podman; a local Python base when Docker Hub is unreachable)
	hack/images/build all
	@# as root, also import them into the real node's containerd store now (minutes for the
	@# runtime), beside the other preparations instead of in the first e2e start
	@if [ "$$(id -u)" = 0 ]; then hack/node/up --images-only; fi

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
