# ferroloop — run `make help` for the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

# Interpreters: pyenv's, else whatever pythonX.Y is on PATH. Override e.g. `make test PY313=/usr/bin/python3.13`.
pyfind = $(or $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python))),$(shell command -v python$(1)))
PY311 ?= $(call pyfind,3.11)
PY312 ?= $(call pyfind,3.12)
PY313 ?= $(call pyfind,3.13)
VERSIONS ?= 3.11 3.12 3.13
V ?= 3.11
PROFILE ?= release
py_of = $(PY$(subst .,,$(1)))
VENV = .venv/$(V)
PYTHON = $(VENV)/bin/python
RUST_SRC := $(shell find crates -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock

.PHONY: help
help: ## show this list
	@grep -hE '^[a-zA-Z0-9_%.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort | awk -F'\t' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# --- environments -------------------------------------------------------------------------------
.venv/%/.ready: requirements-dev.txt
	@test -n "$(call py_of,$*)" || { echo "no Python $* found (pyenv or python$* on PATH)"; exit 1; }
	$(call py_of,$*) -m venv --clear .venv/$*
	.venv/$*/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

.venv/%/.built: .venv/%/.ready $(RUST_SRC) pyproject.toml $(shell find python -name '*.py' -o -name '*.pyi')
	flock .venv/.build-$*.lock env VIRTUAL_ENV=$(CURDIR)/.venv/$* CARGO_TARGET_DIR=target/py$* \
	  .venv/$*/bin/maturin develop $(if $(filter release,$(PROFILE)),--release,) 2>&1 | tail -2
	.venv/$*/bin/python -c "import ferroloop, sys; print('built', ferroloop.__version__, ferroloop.BUILD_PROFILE, 'for', sys.version.split()[0])"
	touch $@

# The stamps are real files: keep them between runs (pattern-rule targets would be deleted as intermediates).
.PRECIOUS: .venv/%/.ready .venv/%/.built

.PHONY: venv build
venv: .venv/$(V)/.ready ## create .venv/$(V) with the build and test tools (V=3.11 by default)
build: .venv/$(V)/.built ## build the extension (release) into .venv/$(V)

# --- the two commands of the README -------------------------------------------------------------
.PHONY: demo
demo: build ## set up from scratch and run the demo: examples on ferroloop + a short timing vs asyncio
	$(PYTHON) examples/demo.py

.PHONY: test
test: test-rust check-stubs $(addprefix test-py-,$(VERSIONS)) $(addprefix conformance-,$(VERSIONS)) ## everything: cargo tests, stub check, pytest and conformance on 3.11, 3.12, 3.13
	@echo "make test: all suites passed"

# --- suites -------------------------------------------------------------------------------------
.PHONY: test-rust
test-rust: ## cargo test of the pure-Rust core
	cargo test -p ferroloop-core

test-py-%: .venv/%/.built ## pytest on one Python version, e.g. make test-py-3.12
	.venv/$*/bin/python -m pytest -q tests

conformance-%: .venv/%/.built ## CPython's own test_asyncio against ferroloop on one version
	.venv/$*/bin/python conformance/run.py --check

.PHONY: conformance
conformance: $(addprefix conformance-,$(VERSIONS)) ## CPython's own test_asyncio on every version (gate: known failures may only shrink)

.PHONY: bench
bench: ## the benchmark suite: asyncio, uvloop, rloop and ferroloop side by side (release build); ARGS=--quick etc.
	$(MAKE) build V=3.11
	.venv/3.11/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements.txt
	.venv/3.11/bin/python bench/run.py --markdown $(ARGS)

.PHONY: bench-echo bench-http
bench-echo: ## echo benchmark: echo servers on each loop + plain-Rust ceiling, compiled client; ARGS=--quick etc.
	$(MAKE) build V=3.11
	.venv/3.11/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements.txt
	.venv/3.11/bin/python bench/echo/run.py --markdown $(ARGS)

bench-http: ## HTTP benchmark: httptools Protocol server and uvicorn on each loop, loaded by wrk; ARGS=--quick etc.
	$(MAKE) build V=3.11
	.venv/3.11/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements.txt
	.venv/3.11/bin/python bench/http/run.py --markdown $(ARGS)

.PHONY: fuzz
SECONDS ?= 60
fuzz: .venv/$(V)/.built ## differential fuzzing against asyncio for SECONDS (default 60) on V: random programs, traces compared
	$(PYTHON) tests/fuzz/run.py --seconds $(SECONDS)

.PHONY: check-stubs
check-stubs: .venv/$(V)/.built ## check python/ferroloop/_ferroloop.pyi against the compiled module (mypy stubtest)
	cd /tmp && $(CURDIR)/$(PYTHON) -m mypy.stubtest ferroloop._ferroloop

.PHONY: lint
lint: ## rustfmt check and clippy
	cargo fmt --all -- --check
	cargo clippy --workspace -- -D warnings

.PHONY: clean
clean: ## remove build products and virtualenvs
	rm -rf target .venv dist conformance/results bench/results bench/echo/target bench/echo/results bench/http/results
