# faqbot — the two commands: `make run` (serve the sample FAQ) and `make test` (the whole suite).
# Everything installs into ./.venv, pinned by constraints.txt (torch is the CPU build, exactly 2.13.0).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip install --constraint constraints.txt

.PHONY: install run test test-quick lint browser-deps service-deps clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first and exactly this version: any other spec pulls a multi-GB CUDA build.
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/faqbot serve

# Chromium + its driver from Debian for the browser tests (never a browser download).
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-cjk >/dev/null; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium chromium-driver fonts-noto-cjk"; fi; \
	fi

# PostgreSQL and Redis from Debian for tests/test_postgres.py and tests/test_redis.py (each test starts its
# own throwaway server on loopback; the packages' own services are not used).
service-deps:
	@if [ ! -x /usr/bin/redis-server ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null; \
	  else echo "PostgreSQL/Redis tests need Debian's packages: sudo apt-get install postgresql redis-server"; fi; \
	fi

lint: install
	$(BIN)/ruff check .

test: install browser-deps service-deps lint
	$(BIN)/python -m pytest

# While working: skip the model-heavy and browser tests (seconds, not minutes).
test-quick: install
	$(BIN)/python -m pytest -m "not slow and not browser" -q

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .ruff_cache
