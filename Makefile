# kvstore developer commands. `make help` lists them.

CARGO  ?= cargo
VENV   := .venv
PYTHON ?= python3

.PHONY: help run build test lint fmt clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: ## Run one node on the embedded redb store at http://localhost:8080 (Swagger UI at /docs)
	$(CARGO) run -p kvstore -- --config config/server.yaml

build: ## Build the release binary into bin/kvstore
	$(CARGO) build --release -p kvstore
	mkdir -p bin && cp target/release/kvstore bin/kvstore

test: $(VENV)/bin/openapi-spec-validator ## Run every test (unit, API, storage suite, process)
	$(CARGO) test --workspace --all-targets

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output, the local venv and ./data
	$(CARGO) clean
	rm -rf $(VENV) bin data

# The OpenAPI validator the spec test runs (from PyPI).
$(VENV)/bin/openapi-spec-validator:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check openapi-spec-validator
