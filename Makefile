# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project with its dev extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-classify test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/visattn demo --out runs/demo

demo-classify: $(STAMP)
	$(BIN)/visattn demo classify --out runs/demo-classify

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/classify.py

clean:
	rm -rf runs .pytest_cache
