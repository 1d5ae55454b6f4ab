# The README's two commands: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Downloads (Maven jars, podman state) are cached here, so warm runs do not fetch again.
export STREAMER_CACHE_DIR := $(CURDIR)/.cache

# The deployment checkers (make test validates Dockerfile and k8s/ with them, offline once
# installed): a venv of their own (checkov pins many libraries) and kustomize from the Go
# module proxy. Pinned: a new version is a deliberate change.
TOOLS      := $(STREAMER_CACHE_DIR)/deploy-tools
KUSTOMIZE  := $(STREAMER_CACHE_DIR)/bin/kustomize
TOOLS_PINS := checkov==3.3.30 kubernetes-validate==1.37.0 yamllint==1.38.0
KUSTOMIZE_VERSION := v5.7.1
# promtool checks and unit-tests k8s/'s alerting rules. Prometheus 3.15.1: its Go module
# versions are v0.3xx (3.15.1 is v0.315.1).
PROMTOOL   := $(STREAMER_CACHE_DIR)/bin/promtool
PROMETHEUS_VERSION := v0.315.1
TOOLS_STAMP := $(TOOLS)/.installed-$(subst ==,-,$(subst $() ,_,$(TOOLS_PINS)))

.PHONY: demo test test-images lint unit install deploy-tools clean simulate bench-decoding bench-routing bench-delivery bench-memory bench-firehose bench-storm bench-handover bench-config bench-waiting bench-quiet bench-inhibition

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet $(TOOLS_PINS)
	touch $@

# Go's module and build caches live under .cache too: a fresh clone builds from scratch
# (what a new machine does) and shares nothing with other checkouts.
GO_ENV := GOPATH=$(STREAMER_CACHE_DIR)/go GOCACHE=$(STREAMER_CACHE_DIR)/go-build GOFLAGS=-modcacherw
# No debugging information (compiled or linked): less to build, the same tools.
GO_BUILD := -gcflags=all=-dwarf=false -ldflags='-s -w'

$(KUSTOMIZE)-$(KUSTOMIZE_VERSION):
	$(GO_ENV) GOBIN=$(STREAMER_CACHE_DIR)/bin \
		go install $(GO_BUILD) sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	touch $@

# `go install` refuses Prometheus (its go.mod has a replace directive): download the module
# and build promtool inside it, as its own main module (GOWORK=off: its go.work names
# folders the module zip leaves out). -tags remove_all_sd leaves out the service-discovery
# plugins (1,113 packages to compile instead of 1,356; a 77 MB binary instead of 120):
# `check rules` and `test rules`, all make test asks of it, do not use them.
$(PROMTOOL)-$(PROMETHEUS_VERSION):
	$(GO_ENV) go mod download github.com/prometheus/prometheus@$(PROMETHEUS_VERSION)
	cd $(STREAMER_CACHE_DIR)/go/pkg/mod/github.com/prometheus/prometheus@$(PROMETHEUS_VERSION) && \
		$(GO_ENV) GOWORK=off go build $(GO_BUILD) -tags remove_all_sd -o $(PROMTOOL) ./cmd/promtool
	touch $@

deploy-tools: $(TOOLS_STAMP) $(KUSTOMIZE)-$(KUSTOMIZE_VERSION) $(PROMTOOL)-$(PROMETHEUS_VERSION)

# The broker's and registry's images (built from Maven Central where no Docker engine is
# reachable; a no-op when they exist), so that no test's timeout runs while they build.
test-images: $(BIN)/.installed
	$(BIN)/python -c 'from tests.conftest import prebuild_images; prebuild_images()'

## demo: run the main job on the local default (broker, registry and incident.io double)
demo: $(BIN)/.installed
	$(BIN)/streamer demo

## test: the whole suite: lint, types, unit, property and integration tests
# The set-up steps run side by side (downloads overlap builds), then pytest in TEST_WORKERS
# processes (pytest-xdist) sharing one broker and registry (tests/conftest.py). Four on two
# cores: the suite mostly waits on the broker and on processes it starts (serial, pytest
# used a third of a core), and its longest test takes ~50 s (warm: 2 workers 5:54, 3 5:08,
# 4 4:25; README). PYTEST_ARGS
# adds options (`make test PYTEST_ARGS=--durations=30`).
TEST_WORKERS ?= 4
test:
	$(MAKE) -j4 --output-sync=target lint deploy-tools test-images
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check streamer tests
	$(BIN)/ruff format --check streamer tests
	$(BIN)/mypy streamer

## unit: only the tests that need no broker (fast feedback while editing), on UNIT_WORKERS
# processes (they compute rather than wait: one per core)
UNIT_WORKERS ?= 2
unit: $(BIN)/.installed deploy-tools
	$(BIN)/pytest -n $(UNIT_WORKERS) --dist worksteal -m "not integration"

## simulate: the whole group simulated (tests/simulation/): SEEDS seeds of PROFILE (quick, short, long); prints seeds/s, the invariants checked and the first failing seed with its replay command
SEEDS ?= 2000
PROFILE ?= short
simulate: $(BIN)/.installed
	$(BIN)/python -m tests.simulation --seeds $(SEEDS) --profile $(PROFILE)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis

## bench-decoding: decoding throughput as a ratio of raw fastavro (not part of make test)
bench-decoding: $(BIN)/.installed
	$(BIN)/python bench/decoding.py

## bench-routing: routing + rendering throughput, 50 routes, against plain dict look-ups
bench-routing: $(BIN)/.installed
	$(BIN)/python bench/routing.py

## bench-config: load time, peak memory and routing rate of generated rules files of 100 to 50,000 routes (~2 min)
bench-config: $(BIN)/.installed
	$(BIN)/python bench/config_scale.py

## bench-delivery: throughput and CPU/alert vs a raw httpx loop, latency, rate-limit fidelity, 100 sources at full rate (~6 min)
bench-delivery: $(BIN)/.installed
	$(BIN)/python bench/delivery.py

## bench-memory: resident memory with a slow sink: a million small events waiting, then 15,000 of 100 KiB (~5 min)
bench-memory: $(BIN)/.installed
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/memory.py --events 15000 --event-bytes 102400

## bench-firehose: the drop path (and 1% routed) end to end vs a raw consume+decode loop (~5 min)
bench-firehose: $(BIN)/.installed
	$(BIN)/python bench/firehose.py

## bench-storm: 1,000 keys x 10 transitions at 120/min, coalesce latest vs none, time compressed x30 (~4 min)
bench-storm: $(BIN)/.installed
	$(BIN)/python bench/storm.py

## bench-waiting: CPU while deliveries wait on a rate limit, per alert and per second of waiting, vs a raw loop (~3 min)
bench-waiting: $(BIN)/.installed
	$(BIN)/python bench/waiting.py

## bench-quiet: a silenced storm of 1,000 criticals on one alert source, then a page: its wait with and without the silence (~1 min)
bench-quiet: $(BIN)/.installed
	$(BIN)/python bench/quiet.py

## bench-inhibition: a zone-down critical and 1,000 warnings it inhibits on one alert source: requests with and without the inhibit rule (~1 min)
bench-inhibition: $(BIN)/.installed
	$(BIN)/python bench/inhibition.py

## bench-handover: 2 sources at 1,200/min in a storm: busiest minute, 429s, duplicates, resume times through a rolling restart and a kill -9 loop (~15 min)
bench-handover: $(BIN)/.installed
	$(BIN)/python bench/handover.py
