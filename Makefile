# The user interface. `make serve` and `make test` are all a newcomer needs:
# each creates the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Workers are started with the first `python` on PATH: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

MODEL_CONFIGS := $(wildcard configs/models/*.yaml)
TS_CONFIG     ?= configs/local.properties
MODEL         ?= minilm
P99_MS        ?=
CONCURRENCY   ?= 32
# `make bench-options`: each a handler-option variant measured beside the YAML's own settings.
OPTIONS       ?= backend=torch backend=onnx backend=torch,quantize=int8 backend=torch,compile=true \
                 backend=torch,static_shapes=true

.PHONY: help install install-dev java models archive serve stop test test-unit test-e2e lint clean bench tune \
        bench-check bench-options breakdown overhead coldstart memory status rollout rollback image test-image

help:
	@echo "make serve   install what serving needs, build the example models and archives, start TorchServe"
	@echo "make test    the whole test suite (unit + end-to-end against a real TorchServe)"
	@echo "make stop    drain (accepted requests finish), then stop the TorchServe that 'make serve' started"
	@echo "make test-unit / make test-e2e                 one half of the suite"
	@echo "make bench MODEL=minilm [BENCH_ARGS=--quick]   benchmark one model (results/bench/)"
	@echo "make tune MODEL=minilm [P99_MS=500]            batch settings at 1, 8, 32 clients; recommend the one that never costs"
	@echo "make breakdown MODEL=minilm [CONCURRENCY=32]   where a request's time goes: queue, stages, CPU, profile"
	@echo "make overhead [OVERHEAD_ARGS=--batch 256]       handler work per request around an instant engine, vs 5dcb478"
	@echo "make bench-check                               quick run vs configs/bench-baseline.json"
	@echo "make bench-options MODEL=minilm [OPTIONS=...]  each speed option beside the YAML's settings"
	@echo "make coldstart                                 first request after READY, warm-up on/off"
	@echo "make memory MODEL=minilm                       RSS/PSS of 1, 2, 4 workers, mmap on/off"
	@echo "make overload MODEL=tabular                    2x saturation for 60 s: p99 accepted, share refused, time to refuse"
	@echo "make frontend MODEL=tabular                    TorchServe's frontend logging side by side (Java CPU per request)"
	@echo "make gpu-check [GPU_CHECK_ARGS=...]           on a CUDA machine: GPU vs CPU in-process, then served on the GPU"
	@echo "make worst-batch [MODELS=\"digits minilm\"]     the worst legal batch vs responseTimeout, in-process and served"
	@echo "make status                                    models, versions, default, workers (tsctl status)"
	@echo "make rollout MODEL=tabular VERSION=2.0         gate a new version, then make it the default"
	@echo "make rollback MODEL=tabular                    the previous version becomes the default again"
	@echo "make manifests                                 deploy/kubernetes/*.yaml from the model YAMLs"
	@echo "make kserve-bundle                              build/kserve/ (KServe's storage layout), deploy/kserve/*.yaml"
	@echo "make monitor [PROMETHEUS_PORT=9090]            a real Prometheus scraping 'make serve' (Ctrl-C stops it)"
	@echo "make prometheus                                install Debian's prometheus with apt-get when missing"
	@echo "make install                                   .venv with what serving needs (torch, TorchServe, ...)"
	@echo "make install-dev                               + the test and benchmark extras, gRPC stubs"
	@echo "make java                                      check that Java 17 (TorchServe's frontend) is installed"
	@echo "make archive / make models / make lint / make clean / make help"
	@echo "make image [BASE=...] [DEVICE=gpu]             the serving image torchserve-toolkit:latest (:gpu, CUDA) (podman)"
	@echo "make test-image                                the image's end-to-end test (podman, after make image)"

install: $(VENV)/.installed

# Serving needs only the core dependencies; `install-dev` adds the test and bench extras.
$(VENV)/.installed: pyproject.toml | java
	@echo "==> creating $(VENV) and installing what serving needs (torch==2.13.0 CPU build, TorchServe 0.12.0, ...)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip setuptools
	$(PY) -m pip install --progress-bar on "torch==2.13.0"
	$(PY) -m pip install --progress-bar on -e .
	$(PY) -m scripts.serve.launcher
	touch $@

install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed
	@echo "==> installing the test and benchmark extras (pytest, sentence-transformers, locust, grpcio, ...)"
	$(PY) -m pip install --progress-bar on -e ".[dev,bench]"
	$(PY) -m scripts.client.grpc_stubs
	touch $@

java:
	@scripts/serve/check_java.sh

models: install
	$(PY) -m scripts.build.models

# DEVICE=gpu lays each YAML's gpu: profile (batch size, delay, queue, engine) over its model_config.
DEVICE ?= cpu
archive: models
	$(PY) -m scripts.build.archive --device $(DEVICE) $(MODEL_CONFIGS)

serve: archive
	$(PY) -m scripts.serve.server start --ts-config $(TS_CONFIG)

stop: install
	$(PY) -m scripts.serve.server stop --ts-config $(TS_CONFIG)

# The operator CLI (`tsctl --help`); these read ./config.properties and ./key_file.json.
status: install
	$(BIN)/tsctl status

rollout: install
	$(BIN)/tsctl rollout $(MODEL) $(VERSION)

rollback: install
	$(BIN)/tsctl rollback $(MODEL)

# Cluster artifacts, generated from configs/ (scripts/deploy/); the unit tests check the committed
# deploy/kubernetes/ and deploy/kserve/*.yaml equal a regeneration.
.PHONY: manifests kserve-bundle
manifests: install
	$(PY) -m scripts.deploy.kubernetes

kserve-bundle: archive
	$(PY) -m scripts.deploy.kserve

test: install-dev archive
	@scripts/deploy/install_prometheus.sh --if-possible
	$(PY) -m ruff check handlers scripts tests
	$(PY) -m pytest

test-unit: install-dev archive
	$(PY) -m pytest tests/unit

test-e2e: install-dev archive
	@scripts/deploy/install_prometheus.sh --if-possible
	$(PY) -m pytest tests/e2e

bench: install-dev models
	$(PY) -m scripts.measure.bench --model $(MODEL) $(BENCH_ARGS)

tune: install-dev models
	$(PY) -m scripts.measure.tune --model $(MODEL) $(if $(P99_MS),--p99-budget-ms $(P99_MS)) $(TUNE_ARGS)

breakdown: install-dev models
	$(PY) -m scripts.measure.breakdown --model $(MODEL) --concurrency $(CONCURRENCY) $(BREAKDOWN_ARGS)

# What the GPU waits for: handle()'s own work per request (engine swapped for an instant one), this tree
# beside the commit before it was cut, rounds interleaved (results/overhead/).
overhead: install-dev models
	$(PY) -m scripts.measure.overhead $(OVERHEAD_ARGS)

bench-check: install-dev models
	$(PY) -m scripts.measure.bench_check

bench-options: install-dev models
	$(PY) -m scripts.measure.bench --model $(MODEL) --variants ours limit --concurrency 32 --options $(OPTIONS) \
		--out results/options $(BENCH_ARGS)

coldstart: install-dev models
	$(PY) -m scripts.measure.coldstart

memory: install-dev models
	$(PY) -m scripts.measure.memory --model $(MODEL)

# The shipped YAML (jobQueueSize, batching) at 2x the rate it saturates at (results/overload/).
.PHONY: overload
overload: install-dev models
	$(PY) -m scripts.measure.overload --model $(MODEL) $(OVERLOAD_ARGS)

# TorchServe's frontend settings side by side (its logging vs configs/log4j2.xml, async logging).
.PHONY: frontend
frontend: install-dev models
	$(PY) -m scripts.measure.frontend --model $(MODEL) $(FRONTEND_ARGS)

# On a CUDA machine: every model on the GPU against the CPU in-process, then served on the GPU
# (docs/performance/gpu-*.json). Without CUDA it says so and exits 0.
.PHONY: gpu-check
gpu-check: install-dev models
	$(PY) -m scripts.measure.gpu_check $(GPU_CHECK_ARGS)

# The biggest batch of legal requests each handler's budgets allow, timed against the YAML's
# responseTimeout (results/worst-batch/); the margin should stay at least 3x.
MODELS ?= tabular digits minilm
.PHONY: worst-batch
worst-batch: install-dev models
	$(PY) -m scripts.measure.worst_batch --models $(MODELS) $(WORST_BATCH_ARGS)

lint: install-dev
	$(PY) -m ruff check handlers scripts tests

clean:
	rm -rf build model_store/*.mar logs

# A real Prometheus on configs/monitoring/prometheus.yml, scraping the server `make serve` started
# (TS_CONFIG gives its metrics port). Debian's package, installed with apt-get when missing (the
# same helper `make test` and .ci/run use). In the foreground: Ctrl-C stops it and deletes its data.
.PHONY: monitor prometheus
PROMETHEUS_PORT ?= 9090

prometheus:
	scripts/deploy/install_prometheus.sh

monitor: install prometheus
	$(PY) -m scripts.deploy.monitor --ts-config $(TS_CONFIG) --port $(PROMETHEUS_PORT)

# The serving image (docs/container.md): podman, runc and mmdebstrap come from apt when missing;
# the Debian base and the wheelhouse are cached under build/image/. BASE=... builds on another base.
# DEVICE=gpu: the CUDA image torchserve-toolkit:gpu (PyPI's CUDA torch, nvgpu), archived with the gpu: profiles.
image: archive
	$(PY) -m scripts.deploy.image --device $(DEVICE) $(if $(BASE),--base $(BASE))

test-image: install-dev image
	$(PY) -m pytest tests/image
