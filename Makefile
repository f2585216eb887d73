# Two commands on a fresh machine: `make run` (demo server) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Commands (Debian packages of the same name) the suite drives for real: redis-server and nginx for the
# scale-out tests, chromium (with its recommended fonts) for the browser tests, openssl for the benchmark's
# self-signed TLS upstream (its smoke test)
SYSTEM_PACKAGES := redis-server nginx chromium openssl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast lint docs bench screenshot clean system-deps

$(BIN)/activate: setup.py requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt -e .
	touch $(BIN)/activate

run: $(BIN)/activate
	$(BIN)/python run.py --demo

# Installs the Debian packages only when one of their commands is missing.
system-deps:
	@missing=""; for command in $(SYSTEM_PACKAGES); do command -v $$command >/dev/null || missing="$$missing $$command"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server nginx openssl && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi

test: $(BIN)/activate system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --cov --cov-report=term

# The core in about a minute: everything but the tests that start redis-server, nginx, supervisord or chromium.
test-fast: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not redis and not nginx and not supervisord and not chromium"

lint: $(BIN)/activate
	$(BIN)/ruff check .

# .env.example and docs/configuration.md's tables, from the settings' definitions in server/config.py
docs: $(BIN)/activate
	$(BIN)/python -m server.config_docs

bench: $(BIN)/activate
	$(BIN)/python -m bench

# Refreshes docs/screenshot.png (the browser test that streams an answer); `make test` writes only temporary files.
screenshot: $(BIN)/activate system-deps
	SCREENSHOT_PATH=$(CURDIR)/docs/screenshot.png $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_web_ui.py \
	  -k test_answer_streams_in_over_many_frames_with_request_id_and_ttft

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage htmlcov
