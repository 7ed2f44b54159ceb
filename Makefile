PYTHON ?= python3
ARGS ?=

.PHONY: install test lint run bench autobahn

## install: the package, its test and lint tools, editable
install:
	$(PYTHON) -m pip install -e '.[test,dev]'

## test: the whole suite (real servers, real clients, real redis-server)
test:
	$(PYTHON) -m pytest -q

## lint: ruff and mypy
lint:
	$(PYTHON) -m ruff check fws tests bench examples
	$(PYTHON) -m mypy

## run: fws_server with ARGS, e.g. make run ARGS="-f echo -p 9001"
run:
	fws_server $(ARGS)

## bench: speed, side by side with other servers, 127.0.0.1 only (needs node and npm)
bench:
	$(PYTHON) -m pip install -q -e '.[bench]'
	$(PYTHON) bench/run.py

## autobahn: RFC 6455 conformance (Autobahn cases via kosoku) against fws_server -f echo
autobahn:
	$(PYTHON) tests/autobahn.py
