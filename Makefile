# Two entry points on a fresh machine:  `make demo` (the main job on the embedded default)
# and `make test` (the test suite). Both set up .venv first; set-up is skipped when current.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.ssb-installed
EXTRAS  ?= cpu,test
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	EXTRAS=$(EXTRAS) PY=$(PY) VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: setup
	$(BIN)/ssb run --config configs/default.yaml

test: setup
	bash scripts/test.sh $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
