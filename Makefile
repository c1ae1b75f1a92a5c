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

.PHONY: demo test env lint clean

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

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) var .pytest_cache
