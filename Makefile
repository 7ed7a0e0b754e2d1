# Flywheel: `make demo` sets up (if needed) and runs the embedded default; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-all protos clean help
help:
	@echo "make demo      set up (if needed) and run the embedded-default pipeline"
	@echo "make test      set up (if needed) and run the test suite (excludes slow tests)"
	@echo "make test-all  also run tests marked slow"
	@echo "make protos    regenerate protos/*_pb2*.py from protos/*.proto"

setup:
	@bash deploy/setup.sh

demo: setup
	$(VENV)/bin/flywheel demo

test: setup
	bash tests/run.sh $(PYTEST_ARGS)

test-all: setup
	bash tests/run.sh -m "slow or not slow" $(PYTEST_ARGS)

protos: setup
	$(PY) -m protos.generate

clean:
	rm -rf runs .pytest_cache
