# The two commands a newcomer needs, each doing all set-up on a fresh machine:
#   make demo   - virtualenv, packages, Kafka jars from Maven Central, broker, topics, worker, traffic
#   make test   - the same set-up, then lint, type checks and every test against a real broker
PYTHON ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup demo test lint unit broker-stop clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[ml,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rakshit demo $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy streams agents scoring schemas infra

test: lint
	$(BIN)/pytest $(ARGS)

unit: setup
	$(BIN)/pytest -m "not kafka" $(ARGS)

broker-stop: setup
	$(BIN)/rakshit broker stop

clean:
	-$(BIN)/rakshit broker stop
	rm -rf .rakshit $(VENV) artifacts
