# Newcomer's entry points: `make install`, `make serve`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEV_MODEL := .models/openchat-dev
IN ?= requirements/base.in
LOCK ?= requirements/lock.txt
# pip prints a warning per package for index folders this machine's pip.conf names but
# that do not exist; hide that noise, keep everything else (and pip's exit status).
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }

.PHONY: install serve test test-servers lint lock dev-model bench bento clean

# `make serve` and `make test` do whatever set-up is missing and skip what is done: the
# venv from the lock (again when the lock or pyproject.toml change), the project, the dev
# model, and for the tests the PostgreSQL and Redis servers' OS packages.
INSTALLED := $(VENV)/.installed

install: $(INSTALLED) $(DEV_MODEL)/config.json

$(INSTALLED): $(LOCK) pyproject.toml | $(BIN)/python
	set -o pipefail; $(BIN)/pip install -q --no-deps -r $(LOCK) $(QUIET_PIP)
	set -o pipefail; $(BIN)/pip install --no-deps --no-build-isolation -e . -q $(QUIET_PIP)
	touch $@

$(DEV_MODEL)/config.json: | $(INSTALLED)
	$(BIN)/openchat dev-model $(DEV_MODEL)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The tests start throwaway PostgreSQL and Redis servers from the OS packages: installed
# here when missing and possible (root with apt-get), else a message saying what to install.
test-servers:
	@if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null && command -v redis-server > /dev/null; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server; \
	else \
		echo "The tests need PostgreSQL and Redis installed (not running): e.g." \
		     "sudo apt-get install postgresql redis-server" >&2; exit 1; \
	fi

# Serves on port 11402; OPENCHAT_MODEL may name a local checkpoint or a Hugging Face id.
# Development only: without OPENCHAT_ADMIN_KEY it bootstraps the admin key below.
DEV_ADMIN_KEY := oc-dev-admin-key-for-local-use-only
serve: install
	OPENCHAT_MODEL=$${OPENCHAT_MODEL:-$(DEV_MODEL)} \
	OPENCHAT_ADMIN_KEY=$${OPENCHAT_ADMIN_KEY:-$(DEV_ADMIN_KEY)} \
	$(BIN)/bentoml serve service:OpenChat

test: install test-servers lint
	$(BIN)/python -m pytest

# A bento (docs/deployment.md): the project's wheel first, which bentofile.yaml packs.
bento: install
	set -o pipefail; rm -rf dist && $(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist . $(QUIET_PIP)
	$(BIN)/bentoml build

# The layers of openchat/ and tools/ (pyproject.toml [tool.importlinter], docs/architecture.md).
lint: install
	$(BIN)/lint-imports

dev-model:
	$(BIN)/openchat dev-model $(DEV_MODEL) --overwrite

# Re-resolve the lock from its .in file (see docs/deployment.md). The CPU lock takes torch
# 2.13.0+cpu from the wheel directory in PIP_FIND_LINKS (or PyTorch's CPU wheel index).
lock:
	$(BIN)/pip install -q uv $(QUIET_PIP)
	$(BIN)/uv pip compile $(IN) --overrides requirements/overrides.txt \
		$(foreach d,$(subst :, ,$(PIP_FIND_LINKS)),--find-links $(d)) \
		--index-strategy unsafe-best-match \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		-o $(LOCK)

clean:
	rm -rf $(VENV) .models .pytest_cache dist build
