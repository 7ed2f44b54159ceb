PYTHON ?= python3
ARGS ?=

.PHONY: install test lint docs run bench autobahn

## install: the package, its test, lint and documentation tools, editable
install:
	$(PYTHON) -m pip install -e '.[test,dev,docs]'

## test: the whole suite (real servers, real clients, real redis-server)
test:
	$(PYTHON) -m pytest -q

## lint: ruff (checks and formatting) and mypy
lint:
	$(PYTHON) -m ruff check fws tests bench examples
	$(PYTHON) -m ruff format --check fws tests bench examples
	$(PYTHON) -m mypy

## docs: the documentation site (Sphinx), warnings as errors, into docs/_build/html
docs:
	$(PYTHON) -m sphinx -W --keep-going -b html docs docs/_build/html

## run: fws_server with ARGS, e.g. make run ARGS="-f echo -p 9001"
run:
	fws_server $(ARGS)

## bench: speed, side by side with other servers, 127.0.0.1 only (needs node, npm and gcc)
bench:
	$(PYTHON) -m pip install -q -e '.[bench]'
	cd bench && npm ci --no-audit --no-fund --silent
	$(PYTHON) bench/run.py $(ARGS)
	$(PYTHON) bench/metrics_cost.py

## autobahn: RFC 6455 conformance (Autobahn cases via kosoku) against fws_server -f echo
autobahn:
	$(PYTHON) tests/autobahn.py
