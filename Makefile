# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   -- creates .venv, installs, runs `raymedia demo`
#   make test   -- same environment plus test extras, runs the tests (not the slow ones, not the image's)
#   make test-unit -- the unit room only (no Ray, no servers, no training: seconds)
#   make test-slow -- the slow fault tests only
#   make test-image -- the cluster image's install and job (pip installs ray[all] and torch: ~5 min)
# torch is installed first, pinned, so pip never resolves a CUDA build on a CPU machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# the cluster image (Dockerfile); cluster.yaml and deploy/kuberay/rayjob.yaml name the same
IMAGE ?= raymedia:0.1.0
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-slow test-image bench install clean image redis

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/raymedia demo

# the publish tests run a real Redis: Debian's redis-server, installed here when missing
redis:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } \
	  || { echo "redis-server is missing and could not be installed: apt-get install redis-server"; exit 1; }

test: install redis
	$(BIN)/python -m pytest -m "not slow and not image" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# the Dockerfile's steps in a fresh venv, then jobs/nightly.py with it (no Docker needed)
test-image: install
	$(BIN)/python -m pytest -m image $(PYTEST_ARGS)

# fault tests that take minutes each (training worker kill, S3 down for good, ...)
test-slow: install redis
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $@

# small versions of every benchmark (minutes); the full-size commands are in BENCHMARKS.md.
# BENCH_ARGS=--no-record keeps BENCHMARKS.md as it is.
BENCH_ARGS ?= --no-record
bench: $(VENV)/.bench
	$(BIN)/python benchmarks/scoring.py --users 20000 --items 5000 $(BENCH_ARGS)
	$(BIN)/python benchmarks/peers.py --users 20000 --items 5000 --no-spark $(BENCH_ARGS)
	$(BIN)/python benchmarks/scale.py --users 20000 50000 --items 50000 $(BENCH_ARGS)
	$(BIN)/python benchmarks/training.py --users 5000 --items 1000 --epochs 2 --model two_tower $(BENCH_ARGS)
	$(BIN)/python benchmarks/precision.py --users 2000 --items 1000 $(BENCH_ARGS)

# needs Docker; push the result and name it in cluster.yaml / deploy/kuberay/rayjob.yaml
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) out .pytest_cache
