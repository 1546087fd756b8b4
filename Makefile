# One entry point for setting up, testing, linting, benchmarking and serving.
# Every target creates .venv on first use (Python 3.11) and installs what it needs.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this exact version lies on the build machine's disk; an unpinned torch
# would pull a multi-GB CUDA build. Override for a CUDA install: make TORCH_SPEC=torch==2.13.0+cu128
TORCH_SPEC ?= torch==2.13.0
CHECKPOINT ?= checkpoints/default
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test test-bf16 test-slow reliability lint format bench clean docker-smoke docker-scale-smoke ui-screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" -e ".[dev,bench,train]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/bert-serve --checkpoint $(CHECKPOINT) --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

# The serving tests again with bf16 forced on every test server that does not pin a precision
# itself (parity tests pin fp32): bf16 answers are checked on every CPU, emulated where the CPU
# has no native bf16. CI runs it after `make test`.
test-bf16: install
	BERT_SERVE_PRECISION=bf16 $(BIN)/python -m pytest -q tests/app \
		tests/reliability/test_graceful_shutdown.py tests/training/evaluation/test_cloze.py

# The README's picture of the page at /: every panel filled in, against CHECKPOINT, in headless
# Chromium (sudo apt-get install -y chromium chromium-driver).
ui-screenshot: install
	PYTHONPATH=$(CURDIR) $(BIN)/python tests/ui_browser.py --checkpoint $(CHECKPOINT) --out docs/ui.png

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# The whole reliability suite, long tests included (soak, kill -9 trials); prints its figures.
reliability: install
	$(BIN)/python -m pytest -q tests/reliability -m "" --figures-json bench/results/reliability.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# Build and run the containers for real: serve, query, train, hot-swap under load, tear down.
docker-smoke: install
	$(BIN)/python deploy/docker_smoke.py

# Three api replicas behind nginx (docker-compose.scale.yml): load spread, hot-swap, a replica
# killed and another restarted under load, slow clients cut off; 0 failed requests. Writes
# deploy/results/docker_scale_smoke.json.
docker-scale-smoke: install
	$(BIN)/python deploy/docker_scale_smoke.py
