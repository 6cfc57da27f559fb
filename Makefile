# kcron — `make run` to see it work, `make test` to prove it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export KCRON_RUN_DIR ?= $(CURDIR)/run
SUPERVISORCTL := KCRON_JOBS= KCRON_PRODUCER= KCRON_CONSUMERS= $(BIN)/supervisorctl -c etc/supervisord.conf

.PHONY: help install run status stop test test-unit test-integration lint check clean

help:
	@echo "make run        start the embedded broker, 1 producer and 2 consumers (Ctrl-C stops)"
	@echo "make status     supervisorctl status of a running 'make run'"
	@echo "make stop       stop a running 'make run' gracefully"
	@echo "make test       install and run unit + integration tests"
	@echo "make lint       ruff + mypy"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -e .
	@touch $@

install: $(STAMP)

run: install
	@VENV=$(VENV) etc/run-local.sh

status: install
	@$(SUPERVISORCTL) status

stop: install
	@$(SUPERVISORCTL) shutdown

test: install
	$(BIN)/python -m pytest -m "not container" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m "not integration and not container" $(PYTEST_ARGS)

test-integration: install
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check kcron tests
	$(BIN)/mypy

check: install
	$(BIN)/kcron check etc/jobs.cron

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache
