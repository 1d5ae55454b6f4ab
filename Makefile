# The README's two commands: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Downloads (Maven jars, podman state) are cached here, so warm runs do not fetch again.
export STREAMER_CACHE_DIR := $(CURDIR)/.cache

.PHONY: demo test lint unit install clean bench-decoding bench-routing bench-delivery bench-memory

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## demo: run the main job on the local default (broker, registry and incident.io double)
demo: $(BIN)/.installed
	$(BIN)/streamer demo

## test: the whole suite: lint, types, unit, property and integration tests
test: lint
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check streamer tests
	$(BIN)/ruff format --check streamer tests
	$(BIN)/mypy streamer

## unit: only the tests that need no broker (fast feedback while editing)
unit: $(BIN)/.installed
	$(BIN)/pytest -m "not integration"

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis

## bench-decoding: decoding throughput as a ratio of raw fastavro (not part of make test)
bench-decoding: $(BIN)/.installed
	$(BIN)/python bench/decoding.py

## bench-routing: routing + rendering throughput, 50 routes, against plain dict look-ups
bench-routing: $(BIN)/.installed
	$(BIN)/python bench/routing.py

## bench-delivery: end-to-end throughput vs a raw httpx loop, latency, rate-limit fidelity (~4 min)
bench-delivery: $(BIN)/.installed
	$(BIN)/python bench/delivery.py

## bench-memory: resident memory with a million-event backlog and a slow sink (~3 min)
bench-memory: $(BIN)/.installed
	$(BIN)/python bench/memory.py
