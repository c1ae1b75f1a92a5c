# Two commands do all the set-up on a fresh machine:
#   make demo   create the environment, generate the synthetic census if needed, run the demo
#   make test   create the environment and run the tests
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DATA   := data/synthetic/sample
# uv when it is on the PATH (a cold install takes seconds), pip otherwise; `make test UV=` forces pip.
UV     ?= $(shell command -v uv 2>/dev/null)

.PHONY: demo test test-fast env lint clean

env: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -n "$(UV)" ]; then \
	  echo "creating $(VENV) with uv"; \
	  $(UV) venv -q --allow-existing --python $(PYTHON) $(VENV) && \
	  VIRTUAL_ENV=$(VENV) $(UV) pip install -q -e '.[dev,spark]'; \
	else \
	  echo "creating $(VENV) with pip (install uv for a faster set-up)"; \
	  $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && \
	  $(PY) -m pip install -q -e '.[dev,spark]'; \
	fi
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (safestats)" >/dev/null
	@touch $@

$(DATA)/manifest.json: | $(STAMP)
	$(VENV)/bin/safestats synth --scale sample --out $(DATA) --quiet

demo: $(STAMP) $(DATA)/manifest.json
	$(VENV)/bin/safestats demo

# The checks CI runs before the tests: lint, format, types, and the import contracts
# (pyproject.toml [tool.importlinter]: which room of the package may import which).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

# Unit and property tests only (under a minute here): for the edit-test loop, not for CI.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests/unit tests/property src

clean:
	rm -rf $(VENV) var .pytest_cache
