# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip takes the CPU torch on disk only when torch==2.13.0 is named in the same command as the rest.
INSTALL := $(BIN)/pip install -c constraints.txt -r requirements.txt -r requirements-dev.txt -e .

# Debian packages the tests drive for real: headless Chromium (viewer), Redis (Celery broker),
# espeak-ng (speech for the speech-recognition tests) and npm (fetches the Compose spec's schema).
SYSTEM_PACKAGES := chromium redis-server espeak-ng npm
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install system-deps test lint demo clean

$(BIN)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== installing into $(VENV): a few minutes the first time (Airflow, torch CPU, transformers)"
	$(INSTALL)
	touch $@

install: $(BIN)/.installed

system-deps:
	@missing=""; for pkg in $(SYSTEM_PACKAGES); do \
	  command -v $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

lint: install
	$(BIN)/ruff check action100m dags plugins scripts tests benchmarks
	$(BIN)/ruff format --check action100m dags plugins scripts tests benchmarks
	$(BIN)/mypy
	PYTHONPATH=plugins $(BIN)/lint-imports

test: lint system-deps
	$(BIN)/pytest -q -p no:cacheprovider tests

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

clean:
	rm -rf $(VENV) .demo artifacts
