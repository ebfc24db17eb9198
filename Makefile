# kernel-warmup: two commands on a fresh machine — `make demo` and `make test`.
# Slow builds (the Go-built control plane, Python dependencies) are cached outside the
# clone in $(CACHE) and reused by CI and later runs.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CACHE ?= $(or $(KERNEL_WARMUP_CACHE),$(HOME)/.cache/kernel-warmup)
export KERNEL_WARMUP_CACHE := $(CACHE)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER_DIR ?= .cluster
PYTEST_ARGS ?=

.PHONY: help setup controlplane lint-python test test-unit test-integration gpu-test demo cluster-up cluster-down lint bench clean image image-test

help:
	@echo "make demo          local control plane + operator + examples, end to end"
	@echo "make test          all CPU tests (unit + integration against a real kube-apiserver)"
	@echo "make cluster-up    start etcd/kube-apiserver/kube-controller-manager on loopback ($(CLUSTER_DIR)/kubeconfig)"
	@echo "make cluster-down  stop it and delete its data"
	@echo "make gpu-test      GPU tests (on a machine with CUDA)"
	@echo "make bench         CPU benchmarks"
	@echo "make lint          ruff, import-linter (.importlinter), byte-compile, helm lint"
	@echo "make image         the operator image as an OCI archive in build/, without Docker (root, debootstrap, umoci)"
	@echo "make image-test    build it if needed and run it with podman: uid 65532, entry points, --help, bootstrap"

# Always run: it takes seconds when the dependency folder exists, and re-points .venv at
# the right one when pyproject.toml or $(CACHE) changed (a stale .venv is never trusted).
setup:
	$(PYTHON) scripts/setup_env.py --venv $(VENV)

# Builds etcd, kube-apiserver, kube-controller-manager (Go) and fetches kubectl + helm (PyPI).
controlplane:
	$(PYTHON) devcluster/devcluster.py build

# ruff + import-linter (the layer rules in .importlinter): run by `make lint` and first by `make test`.
lint-python: setup
	$(PY) scripts/lint.py

# pytest exits 5 when it collects nothing: say so, and fail (make then exits non-zero).
# The image test runs last where the image tools are installed and the Debian base is
# cached (`make image` makes it); elsewhere it prints why it is skipped.
test: setup controlplane lint-python
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS) || { rc=$$?; \
	  [ $$rc -ne 5 ] || echo "make test: pytest collected no tests (exit 5): failing" >&2; exit $$rc; }
	$(PYTHON) scripts/build_image.py test --if-ready

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup controlplane
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

gpu-test: setup
	$(PY) -m pytest tests/gpu $(PYTEST_ARGS)

cluster-up: controlplane
	$(PYTHON) devcluster/devcluster.py up --dir $(CLUSTER_DIR)

cluster-down:
	$(PYTHON) devcluster/devcluster.py down --dir $(CLUSTER_DIR)

demo: setup cluster-up
	$(PY) devcluster/demo.py --kubeconfig $(CLUSTER_DIR)/kubeconfig

bench: setup
	$(PY) bench/bench_triton_warmup.py --skip-gpu

lint: setup controlplane lint-python
	$(PY) -m compileall -q initcontainer operator tests bench devcluster scripts
	helm=$$($(PYTHON) devcluster/devcluster.py bin helm); \
	  $$helm lint --strict charts/kernel-warmup && \
	  $$helm lint --strict charts/kernel-warmup -f charts/kernel-warmup/ci/namespaced-values.yaml

# No Docker engine needed: a debootstrapped Debian base (cached in $(CACHE)/image), the
# install steps of image/install.sh (shared with the Dockerfile), umoci for the OCI layout.
image:
	$(PYTHON) scripts/build_image.py build

image-test:
	$(PYTHON) scripts/build_image.py test

clean: cluster-down
	rm -rf $(VENV) .demo
