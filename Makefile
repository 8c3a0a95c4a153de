# Two commands on a fresh machine: `make demo` and `make test`; `make serve` then shows the demo in a browser.
# All create .venv when missing and install the project with its dev extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_CHECKPOINT := runs/demo/run/best.safetensors

.PHONY: demo demo-classify serve test bench bench-serve bench-quality clean

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

# The demo captioner, trained once (only when runs/demo has none).
$(DEMO_CHECKPOINT): | $(STAMP)
	$(BIN)/visattn demo --out runs/demo

# The page where hovering a word shows where the captioner looked: http://127.0.0.1:8000/ (Ctrl-C stops it).
serve: $(STAMP) $(DEMO_CHECKPOINT)
	$(BIN)/visattn serve --checkpoint $(DEMO_CHECKPOINT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Speed, side by side with the textbook reference in the same run; JSON lines on stdout (about 10 minutes).
bench: $(STAMP)
	$(BIN)/visattn bench caption-train --json
	$(BIN)/visattn bench caption-train --dtype bf16 --json
	$(BIN)/visattn bench beam --json
	$(BIN)/visattn bench cache --json
	$(BIN)/visattn bench data --json

# visattn serve over HTTP vs calling the Predictor, at concurrency 1, 4, 16 (JSON; about a minute).
bench-serve: $(STAMP) $(DEMO_CHECKPOINT)
	$(BIN)/visattn bench serve --threads 2 --json

# Model quality against the baselines (long: about an hour on 2 cores).
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/classify.py
	$(BIN)/python benchmarks/caption_quality.py
	$(BIN)/python benchmarks/detect_quality.py

clean:
	rm -rf runs .pytest_cache
