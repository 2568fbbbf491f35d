# kvstore developer commands. `make help` lists them.

CARGO  ?= cargo
VENV   := .venv
PYTHON ?= python3
# docker compose (v2) where it exists, else docker-compose (v1); project "kvstore".
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi) -p kvstore -f compose/docker-compose.yml

.PHONY: help run build test test-images alerts-test kubernetes-test lint fmt clean cluster cluster-stop up down logs ps compose-test bench bench-scale list-walk soak

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: ## Run one node on the embedded redb store at http://localhost:8080 (Swagger UI at /docs)
	$(CARGO) run -p kvstore -- --config config/server.yaml

cluster: ## Start a 3-node cluster on loopback (API :8081-8083, Raft :9001-9003), data and logs in data/cluster/
	$(CARGO) build -p kvstore
	@mkdir -p data/cluster
	@for i in 1 2 3; do \
	  if [ -f data/cluster/node$$i.pid ] && kill -0 $$(cat data/cluster/node$$i.pid) 2>/dev/null \
	     && ! ps -o stat= -p $$(cat data/cluster/node$$i.pid) | grep -q Z; then \
	    echo "node$$i already running (pid $$(cat data/cluster/node$$i.pid))"; continue; fi; \
	  nohup target/debug/kvstore --config config/cluster/node$$i.yaml >data/cluster/node$$i.out 2>&1 & \
	  echo $$! > data/cluster/node$$i.pid; \
	done
	@for i in 1 2 3; do \
	  for t in $$(seq 300); do curl -sf http://127.0.0.1:808$$i/ready >/dev/null && break; sleep 0.1; done; \
	  curl -sf http://127.0.0.1:808$$i/ready >/dev/null || { echo "node$$i is not ready; see data/cluster/node$$i.log"; exit 1; }; \
	done
	@echo "cluster ready: http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083"

cluster-stop: ## Stop the local cluster started by make cluster (data is kept)
	@for i in 1 2 3; do \
	  if [ -f data/cluster/node$$i.pid ]; then kill -TERM $$(cat data/cluster/node$$i.pid) 2>/dev/null || true; rm -f data/cluster/node$$i.pid; fi; \
	done
	@echo "cluster stopped"

build: ## Build the release binary into bin/kvstore
	$(CARGO) build --release -p kvstore
	mkdir -p bin && cp target/release/kvstore bin/kvstore

test: $(VENV)/bin/openapi-spec-validator ## Run every test (unit, API on both backends, storage suites, process, cluster, container faults, alert rules, Kubernetes manifests, API fuzzing, compose)
	@$(MAKE) -s test-images
	KV_TEST_POSTGRES_IMAGE="$$(images/postgres-image.sh)" $(CARGO) test --workspace --all-targets --no-fail-fast
	@$(MAKE) -s kubernetes-test
	$(PYTHON) readme-test/run.py
	@$(MAKE) -s api-fuzz
	@$(MAKE) -s compose-test

test-images: ## Build the images the container tests use: kvstore:local from the root Dockerfile, and PostgreSQL where no registry has it
	@if docker info >/dev/null 2>&1; then images/postgres-image.sh >/dev/null && images/build.sh kvstore; \
	else echo "no Docker daemon: not building images (the container tests will say SKIPPED)"; fi

alerts-test: ## The alert rules' unit tests alone (promtool test rules; `make test` runs them in integration-tests/tests/alerts.rs)
	promtool check rules compose/alerts.yml
	promtool test rules compose/alerts_test.yml

# The manifests as kustomize renders them: the base and each overlay.
KUBERNETES_DIRS := deploy/kubernetes/base deploy/kubernetes/overlays/postgres

kubernetes-test: $(VENV)/bin/kubernetes-validate ## Render deploy/kubernetes with kustomize (kubectl) and validate it against the Kubernetes schemas, offline (skipped without kubectl unless KV_REQUIRE_KUBECTL is set)
	@if ! command -v kubectl >/dev/null 2>&1; then \
	  if [ -n "$$KV_REQUIRE_KUBECTL" ]; then echo "KV_REQUIRE_KUBECTL is set but kubectl is not installed" >&2; exit 1; fi; \
	  echo "SKIPPED: the Kubernetes manifests are rendered with kubectl (Debian: apt-get install kubectl)"; exit 0; fi; \
	mkdir -p target/kubernetes; \
	for dir in $(KUBERNETES_DIRS); do \
	  out=target/kubernetes/$$(echo $$dir | tr / _).yaml; \
	  kubectl kustomize $$dir > $$out || exit 1; \
	  $(VENV)/bin/kubernetes-validate --strict --quiet --no-warn $$out || exit 1; \
	  echo "$$dir: rendered and valid ($$(grep -c '^kind:' $$out) resources)"; \
	done

compose-test: $(VENV)/bin/openapi-spec-validator ## The compose stack: config checks, then end to end (needs Docker; skipped without it unless KV_REQUIRE_DOCKER is set)
	@if docker info >/dev/null 2>&1; then $(VENV)/bin/python compose/check_config.py && compose/smoke-test.sh; \
	elif [ -n "$$KV_REQUIRE_DOCKER" ]; then echo "KV_REQUIRE_DOCKER is set but Docker is not available" >&2; exit 1; \
	else echo "SKIPPED: the compose smoke test needs Docker"; fi

up: ## Start the dev stack: 3 nodes on PostgreSQL, Prometheus, and with a registry Grafana and Tempo
	@compose/up.sh

down: ## Stop the dev stack (VOLUMES=1 also removes its data volume)
	$(COMPOSE) --profile full down --remove-orphans $(if $(VOLUMES),--volumes,)

logs: ## Follow the dev stack's logs
	$(COMPOSE) --profile full logs -f --tail=100

ps: ## List the dev stack's containers
	$(COMPOSE) --profile full ps

soak: ## Power-loss soak: one node cut 50 times under writes (and 50 torn cuts), a 3-node cluster through 5 rounds of cuts (needs /dev/fuse, root)
	KV_POWERLOSS_CUTS=$${KV_POWERLOSS_CUTS:-50} KV_POWERLOSS_ROUNDS=$${KV_POWERLOSS_ROUNDS:-5} \
	  $(CARGO) test -p kvstore --test node -- --nocapture --test-threads 1 \
	  powerloss::power_cuts_lose_no_acknowledged_write \
	  powerloss::torn_cuts_without_sync_writes_start_or_refuse_cleanly \
	  powerloss::a_cluster_whose_nodes_lose_power_stays_linearizable

bench: ## kvstore vs etcd on this machine, same generator (kvbench), one table with ratios
	bench/run.sh

bench-scale: ## kvstore vs etcd at scale: YCSB, open loop, N keys preloaded, 64 KiB values, restart, join, RSS, disk (SCALE=full: 1,000,000 keys)
	bench/scale.sh

list-walk: ## Load 1,000,000 keys into a release node, list them page by page: each once, in order, RSS growth < 64 MiB
	bench/list-walk.sh

.PHONY: api-fuzz
api-fuzz: ## Fuzz the HTTP API against its served OpenAPI spec (schemathesis, one redb node): no 5xx, responses as documented
	VENV=$(VENV) PYTHON=$(PYTHON) CARGO=$(CARGO) integration-tests/api-fuzz/run.sh

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output, the local venv and ./data
	$(CARGO) clean
	rm -rf $(VENV) bin data

# Kubernetes schema validation for kubernetes-test (from PyPI; the schemas ship with it).
$(VENV)/bin/kubernetes-validate:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate

# The OpenAPI validator the spec test runs (from PyPI).
$(VENV)/bin/openapi-spec-validator:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check openapi-spec-validator
