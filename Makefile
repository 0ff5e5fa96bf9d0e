# The two commands a newcomer needs, each doing all set-up on a fresh machine:
#   make demo   - virtualenv, packages, Kafka jars from Maven Central, broker, topics, worker, traffic
#   make test   - the same set-up, then lint, type checks and every test against a real broker
# The first interpreter that runs and is 3.11+ (a pyenv shim can exist without a usable version).
PYTHON ?= $(shell for p in python3 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

CHROMIUM := /usr/bin/chromium

.PHONY: setup demo test lint unit broker-stop clean postgresql prometheus

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3, python3.12 or python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[ml,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rakshit demo $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy streams agents scoring schemas infra

# The dashboard's browser tests drive Debian's chromium (Playwright never downloads a browser).
$(CHROMIUM):
	@echo "installing Debian's chromium for the dashboard's browser tests"
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi

# The durable store's tests start Debian's PostgreSQL server themselves (tests/pg_server.py:
# initdb into a temporary directory, a free loopback port, as the postgres user when run as
# root); the package provides the server programs.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian's postgresql for the durable store's tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else sudo apt-get update -qq && \
	    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; fi; \
	fi

# The alerting rules' tests (tests/test_alerts.py) run Debian's promtool on the rules and their
# unit tests, and start Debian's prometheus server on a free loopback port to scrape a worker.
prometheus:
	@if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/promtool ]; then \
	  echo "installing Debian's prometheus for the alerting rules' tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else sudo apt-get update -qq && \
	    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; fi; \
	fi

test: lint $(CHROMIUM) postgresql prometheus
	$(BIN)/pytest $(ARGS)

unit: setup postgresql prometheus
	$(BIN)/pytest -m "not kafka" $(ARGS)

broker-stop: setup
	$(BIN)/rakshit broker stop

clean:
	-$(BIN)/rakshit broker stop
	rm -rf .rakshit $(VENV) artifacts
