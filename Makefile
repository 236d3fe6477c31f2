# Newcomer's entry points: `make install`, `make serve`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEV_MODEL := .models/openchat-dev
# pip prints a warning per package for index folders this machine's pip.conf names but
# that do not exist; hide that noise, keep everything else (and pip's exit status).
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }

.PHONY: install serve test lock dev-model bench clean

install: $(BIN)/python
	set -o pipefail; $(BIN)/pip install -q --no-deps -r requirements/lock.txt $(QUIET_PIP)
	set -o pipefail; $(BIN)/pip install --no-deps --no-build-isolation -e . -q $(QUIET_PIP)
	$(BIN)/openchat dev-model $(DEV_MODEL)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serves on port 11402; OPENCHAT_MODEL may name a local checkpoint or a Hugging Face id.
serve:
	OPENCHAT_MODEL=$${OPENCHAT_MODEL:-$(DEV_MODEL)} $(BIN)/bentoml serve service:OpenChat

test:
	$(BIN)/python -m pytest

dev-model:
	$(BIN)/openchat dev-model $(DEV_MODEL) --overwrite

# Re-resolve requirements/lock.txt from requirements/base.in (see docs/deployment.md).
lock:
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile requirements/base.in --overrides requirements/overrides.txt \
		--find-links /opt/wheels --index-strategy unsafe-best-match \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		-o requirements/lock.txt

clean:
	rm -rf $(VENV) .models .pytest_cache
