# kcron — `make run` to see it work, `make test` to prove it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export KCRON_RUN_DIR ?= $(CURDIR)/run
SUPERVISORCTL := KCRON_JOBS= KCRON_PRODUCER= KCRON_CONSUMERS= $(BIN)/supervisorctl -c etc/supervisord.conf

.PHONY: help install run status stop test test-all test-unit test-integration lint check clean

help:
	@echo "make run        start the embedded broker, 1 producer and a worker pool per queue (Ctrl-C stops)"
	@echo "make status     supervisorctl status of a running 'make run'"
	@echo "make stop       stop a running 'make run' gracefully"
	@echo "make test       unit tests + a representative set of integration tests (< 5 min)"
	@echo "make test-all   every test but the container ones: adds the slow fault drills"
	@echo "                (R1-R4) and the bench smoke test (installs cron, edits root's crontab)"
	@echo "make lint       ruff + mypy"
	@echo "make partitions-experiment  what 1, 2 and 3 partitions do to 2 workers (report + chart)"
	@echo "make bench      kcron vs Debian cron: precision, herd, throughput, scale (bench-quick: < 3 min)"
	@echo "make image      build the kcron image (containers/Dockerfile)"
	@echo "make up         docker compose: Apache Kafka + kcron, in the background"
	@echo "make logs       follow kcron's log (job output); make compose-status, make down"
	@echo "make test-container  build the image, run the compose project, check it (Docker)"

# requirements-run.txt: supervisord, for `make run` (the image installs it too).
$(STAMP): requirements.txt requirements-run.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements-run.txt -r requirements-dev.txt -e .
	@touch $@

install: $(STAMP)

run: install
	@VENV=$(VENV) etc/run-local.sh

status: install
	@$(SUPERVISORCTL) status

stop: install
	@$(SUPERVISORCTL) shutdown

# `make test` leaves out what is marked slow (the fault drills R1-R4, the bench
# smoke test, a few long integration tests); `make test-all` runs those too, as
# .ci/run does. Container tests: `make test-container`.
test: install
	$(BIN)/python -m pytest -m "not slow and not container" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -m "not container" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m "not integration and not container" $(PYTEST_ARGS)

test-integration: install
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check kcron tests tools bench
	$(BIN)/ruff format --check kcron tests tools bench
	$(BIN)/mypy

check: install
	$(BIN)/kcron check etc/jobs.cron

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache

# The measured answer to "what do 1, 2 or 3 partitions do to two workers?" (README
# "What partitions do"): writes reports/partitions-experiment.md and .png.
# Override with PARTITIONS="1 2 3 4" CONSUMERS=3 RUNS=240 EXPERIMENT_ARGS=--no-extras;
# KCRON_BOOTSTRAP_SERVERS runs it on a cluster instead of a throwaway broker
# (tools/brokers.py chooses that one). Dev tooling: tools/experiment/, not installed.
.PHONY: partitions-experiment
partitions-experiment: install
	$(BIN)/python -m tools.experiment partitions --partitions "$(or $(PARTITIONS),1 2 3)" \
		--consumers $(or $(CONSUMERS),2) --runs $(or $(RUNS),120) $(EXPERIMENT_ARGS)

# --- container image and docker compose (containers/, docker-compose.yml) -----
# `docker compose` (v2) when present, else docker-compose (v1 1.29 works).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
KCRON_IMAGE ?= kcron:latest
# On a Docker engine without a bridge network (dockerd --bridge=none, as
# .ci/docker-setup.sh starts it) the project runs on host networking, every
# port on 127.0.0.1 (containers/compose-hostnet.sh renders it into run/).
# HOSTNET=0|1 forces the choice.
HOSTNET ?= $(shell docker network inspect bridge >/dev/null 2>&1 && echo 0 || echo 1)
HOSTNET_FILE = $(KCRON_RUN_DIR)/compose-hostnet.yml
COMPOSE_PROJECT = $(COMPOSE) $(if $(filter 1,$(HOSTNET)),-f $(HOSTNET_FILE) --project-directory $(CURDIR))
SERVICE ?= kcron

.PHONY: image up down logs compose-status test-container

# The kcron image (containers/Dockerfile). BASE_IMAGE=... to choose the base;
# by default python:3.11-slim-bookworm, or the local base (containers/local-base.sh)
# where no registry is reachable.
image:
	containers/build-image.sh $(KCRON_IMAGE)

# Kafka + kcron (1 producer, KCRON_CONSUMERS consumers) and the consumer-only
# nodes of queues cluster-a and cluster-b, in the background.
up: image
	@if [ "$(HOSTNET)" = 1 ]; then KCRON_IMAGE=$(KCRON_IMAGE) containers/compose-hostnet.sh $(HOSTNET_FILE) >/dev/null; fi
	KCRON_IMAGE=$(KCRON_IMAGE) $(COMPOSE_PROJECT) up -d --no-build
	@echo "up: 'make logs' for job output, 'make compose-status', 'make down' to stop"

# Containers removed, Kafka's volume kept; `make down V=1` removes it too.
down:
	$(COMPOSE_PROJECT) --profile workers down --remove-orphans $(if $(V),-v)

logs:
	$(COMPOSE_PROJECT) logs -f --tail=200 $(SERVICE)

compose-status:
	@$(COMPOSE_PROJECT) ps
	@$(COMPOSE_PROJECT) exec -T $(SERVICE) supervisorctl status

# Builds the image and runs the compose project for real (tests/container/).
test-container: install
	$(BIN)/python -m pytest -m container $(PYTEST_ARGS)

# Benchmarks against Debian's cron (README "Performance"): P1 precision, P2 herd,
# P3 throughput, P4 scale, measured side by side in one run. Writes results.json,
# summary.md and kcron-vs-cron.png to bench/results/ (bench-quick: bench/results/quick/,
# reduced sizes, under 3 minutes). Needs root: installs cron with apt-get if missing
# and adds, then removes, a block in root's crontab. Never part of `make test`.
# BENCH_ARGS adds options, e.g. BENCH_ARGS="--kcron-env KCRON_CONCURRENCY=4"
# (python -m bench.run --help lists them).
.PHONY: bench bench-quick
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)
