# One task runner: these recipes are what CI and the README run.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CLUSTER := e2e/cluster
include $(CLUSTER)/versions.env
CACHE ?= $(HOME)/.cache/airlock
# Upstream tools built by the cluster scripts, on PATH for every recipe.
TOOLS_PATH := $(CACHE)/bin/kubernetes-$(K8S_VERSION):$(CACHE)/bin/crane-$(CRANE_VERSION):$(CACHE)/bin/helm-$(HELM_VERSION):$(CACHE)/bin/cosign-$(COSIGN_VERSION):$(CACHE)/bin/crictl-$(CRICTL_VERSION):$(CACHE)/bin/grpcurl-$(GRPCURL_VERSION):$(CACHE)/bin/kstatus-$(CLI_UTILS_VERSION):$(CACHE)/bin/source-controller-$(FLUX_SOURCE_CONTROLLER_VERSION):$(CACHE)/bin/kustomize-controller-$(FLUX_KUSTOMIZE_CONTROLLER_VERSION):$(CACHE)/bin/kwok-$(KWOK_VERSION)
export PATH := $(TOOLS_PATH):$(PATH)
# Python with grpcio, for the e2e test that calls the router from a Python client.
export AIRLOCK_PYTHON ?= $(CACHE)/venv/bin/python
# The local cluster unless the caller points at another one.
export KUBECONFIG ?= /var/lib/airlock-cluster/kubeconfig

.PHONY: help tools demo bench chaos soak fuzz fuzz-smoke test lint fmt-check clippy shellcheck chart-lint alerts-test docs-links deny unit cluster-deps cluster-build cluster-up cluster-down cluster-status e2e-images client-deps e2e

help: ## list the recipes
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

# The one prerequisite every README command and CI share: Debian packages, the pinned Rust
# toolchain with the musl target, and every upstream tool the recipes call (kubectl, helm, cosign,
# crane, grpcurl, ...). Each step is a no-op when already done, so a warm machine pays nothing.
tools: cluster-deps ## install what every recipe needs (Debian packages, Rust + musl target, upstream tools)
	$(CLUSTER)/toolchain.sh
	$(CLUSTER)/build.sh

demo: tools cluster-up e2e-images ## local cluster, Airlock installed with Helm, the hello plugin applied and its hook called
	cargo build --locked -p airlockctl
	@bash e2e/demo.sh

bench: tools cluster-up e2e-images ## benchmarks: verification, router vs direct shim, 1000 disabled Plugins (BENCH_PLUGINS=N), 10,000 on fake nodes (BENCH_KWOK_PLUGINS=N)
	@bash e2e/bench.sh

soak: tools cluster-up e2e-images ## the router under load with failing plugins, a row a minute (SOAK_SECONDS=600, SOAK_PLUGINS=20, SOAK_RATE=calls/s, default half the measured throughput)
	cargo run --quiet --locked -p airlock-e2e --bin soak

chaos: tools cluster-up e2e-images ## chaos scenarios on the local cluster, each bounded (CHAOS_SCENARIOS=router-pod-deleted,operator-leader-killed,apiserver-restarted,registry-down,certificate-rotated,kubelet-containerd-restarted; CHAOS_ROUNDS, CHAOS_WORKERS, CHAOS_PLUGINS, CHAOS_KILLS, CHAOS_ROLLOUT_PLUGINS, CHAOS_APISERVER_DOWN_SECONDS, CHAOS_REGISTRY_DOWN_SECONDS, CHAOS_CERTIFICATE_LIFETIME_SECONDS); needs root (restarts the cluster's daemons)
	@# The CloudEvents sink the operator scenario counts audit records at (the binary installs
	@# Airlock, pointed at it, as the e2e does).
	$(CLUSTER)/collector.sh
	cargo run --quiet --locked -p airlock-e2e --bin chaos

test: tools lint unit fuzz-smoke e2e ## the whole suite: fmt, clippy, shellcheck, unit tests, a fuzz smoke, cluster e2e
# The whole suite is a one-shot build: incremental compilation data (~5 GiB) would only fill the disk.
test: export CARGO_INCREMENTAL := 0

fuzz: tools ## every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each (default 60); crashes left in fuzz/artifacts
	fuzz/run.sh

# A bounded smoke of `make fuzz` for the suite: every target builds and runs 100,000 inputs
# from a fixed seed (deterministic: a finding there is a change's, not luck's).
fuzz-smoke: tools
	FUZZ_RUNS=100000 FUZZ_NICE=0 fuzz/run.sh

lint: fmt-check clippy shellcheck chart-lint alerts-test deny docs-links ## formatting and lints (Rust, shell, the Helm chart and its alert rules, dependencies, the docs' links)

fmt-check:
	cargo fmt --all --check

clippy:
	cargo clippy --workspace --all-targets --locked -- -D warnings

# The Debian package, installed by `make tools` (e2e/cluster/deps.sh).
shellcheck:
	shellcheck -x e2e/*.sh e2e/cluster/*.sh fuzz/run.sh .ci/run

chart-lint: ## helm lint --strict and render of charts/airlock: defaults and every charts/airlock/ci/*.yaml
	e2e/chart-lint.sh

deny: ## cargo-deny offline: licenses, bans, sources (deny.toml; advisories need the network)
	e2e/cargo-deny.sh

alerts-test: ## promtool check and unit tests of the chart's alert rules (charts/airlock/files/alerts*.yaml)
	e2e/alerts-test.sh

docs-links: ## every relative link (and #anchor) of docs/ and the top-level Markdown files resolves; the CRD reference matches the CRDs
	cargo test --locked -p airlock-crds --test docs_links --test crd_drift

unit: ## unit tests (no cluster)
	cargo test --workspace --locked --exclude airlock-e2e
	@# The Go and Python SDKs' own tests (their conformance with the real shim is cli/tests/new.rs).
	cd sdk/go && GOTOOLCHAIN=local GOFLAGS=-mod=mod go vet ./... && GOTOOLCHAIN=local GOFLAGS=-mod=mod go test ./...
	python3 -m unittest discover -s sdk/python
	@# The e2e crate's own unit tests (artifacts, waits, bench reports) need no cluster either.
	cargo test --locked -p airlock-e2e --lib --bins

cluster-deps: ## install the Debian packages the cluster needs
	$(CLUSTER)/deps.sh

cluster-build: tools ## build every pinned upstream binary (cached under ~/.cache/airlock)

cluster-up: tools ## start (or reuse) the local cluster
	$(CLUSTER)/up.sh

cluster-down: ## stop the local cluster and remove everything it created
	$(CLUSTER)/down.sh

cluster-status: ## is the local cluster up and healthy?
	$(CLUSTER)/status.sh

e2e-images: tools ## build and push the images the e2e suite runs
	cargo run --quiet --locked -p airlock-e2e --bin e2e-images

client-deps: tools ## gRPC clients written elsewhere, for the e2e: grpcurl (Go, from source) and Python grpcio
	@[ -x $(AIRLOCK_PYTHON) ] || python3 -m venv $(CACHE)/venv
	@$(CACHE)/venv/bin/pip install --quiet --disable-pip-version-check grpcio==1.85.1 grpcio-tools==1.85.1

e2e: cluster-up e2e-images client-deps ## end-to-end tests against the cluster
	@# Airlock is installed once for the run (the tests skip their own install when told so);
	@# a short progress deadline so the rollback test does not wait two minutes.
	@# The OpenTelemetry backend the tracing e2e reads spans back from (Jaeger, memory storage).
	$(CLUSTER)/collector.sh
	e2e/helm-install.sh --set progressDeadlineSeconds=20
	AIRLOCK_E2E_INSTALLED=1 cargo test --locked -p airlock-e2e -- --test-threads=4
