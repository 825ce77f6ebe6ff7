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
help: ## show this list (with the values of V, VERSIONS and the interpreters in use)
	@grep -hE '^[a-zA-Z0-9_%.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' \
	  | sed -e 's|\$$(V)|$(V)|g' -e 's|\$$(VERSIONS)|$(VERSIONS)|g' \
	  | sort | awk -F'\t' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'
	@echo
	@echo "  V=$(V) (the version of venv, build, demo, check-stubs; VERSIONS=\"$(VERSIONS)\" for test)"
	@$(foreach v,$(VERSIONS),echo "  Python $(v): $(or $(call py_of,$(v)),not found (pyenv or python$(v) on PATH))";)

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
demo: ## set up from scratch and run the demo: examples on ferroloop + a short timing vs asyncio (and uvloop)
	@echo "demo [1/4] virtualenv .venv/$(V) ($(call py_of,$(V))) with the build and test tools of requirements-dev.txt (first time only)"
	@$(MAKE) --no-print-directory -s .venv/$(V)/.ready
	@echo "demo [2/4] compiling ferroloop (Rust, release build) into .venv/$(V) (first time, and after a change: 1-4 min)"
	@$(MAKE) --no-print-directory -s .venv/$(V)/.built
	@echo "demo [3/4] uvloop, for the comparison (examples/requirements-demo.txt)"
	@$(MAKE) --no-print-directory -s .venv/$(V)/.demo
	@echo "demo [4/4] $(PYTHON) examples/demo.py"
	@$(PYTHON) examples/demo.py

.venv/%/.demo: .venv/%/.ready examples/requirements-demo.txt
	.venv/$*/bin/python -m pip install -q --disable-pip-version-check -r examples/requirements-demo.txt
	touch $@
.PRECIOUS: .venv/%/.demo

.PHONY: test
test: services test-rust check-stubs $(addprefix test-py-,$(VERSIONS)) $(addprefix conformance-,$(VERSIONS)) test-wheel test-soak ## everything: cargo tests, stub check, pytest and conformance on $(VERSIONS), the 3.11 wheel check, soak (3.5 min); memcheck is `make test-memcheck`
	@echo "make test: all suites passed"

# --- suites -------------------------------------------------------------------------------------
.PHONY: services
services: ## install PostgreSQL and Redis if missing (apt-get, as root); the tests start their own servers
	.ci/services.sh

.PHONY: test-rust
test-rust: ## cargo test of the pure-Rust core
	cargo test -p ferroloop-core

test-py-%: .venv/%/.built services ## pytest on one Python version, e.g. make test-py-3.12
	.venv/$*/bin/python -m pytest -q tests

conformance-%: .venv/%/.built ## CPython's own test_asyncio against ferroloop on one version
	.venv/$*/bin/python conformance/run.py --check

.PHONY: conformance
conformance: $(addprefix conformance-,$(VERSIONS)) ## CPython's own test_asyncio on every version (gate: known failures may only shrink)

# --- memory checking and soak ----------------------------------------------------------------
# valgrind memcheck on CPython 3.13 with PYTHONMALLOC=malloc (CPython's allocator bypassed, so
# CPython's own suppressions are not needed; tools/valgrind.supp holds one glibc false positive).
# Not 3.11: CPython 3.11's own int.from_bytes reads an uninitialised digit at every start-up
# (_PyLong_FromByteArray of a zero), and the value's every later use is reported. Errors only, no leak check: an interpreter does not free everything at exit.
MEMCHECK_V ?= 3.13
VALGRIND = valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --num-callers=40 -q \
  --suppressions=$(CURDIR)/tools/valgrind.supp
# Left out: test_net_bulk (100 MiB transfers outlast its 60 s timeouts under valgrind's ~40x
# slowdown; test_net_cancel and test_faults still move 32-48 MiB), and tests whose assertions are
# about wall-clock time (10 ms deadlines) or whose ferroloop code runs in a child process, which
# valgrind does not trace (MEMCHECK_SKIP).
MEMCHECK_TESTS = test_callbacks test_timers test_loop_run test_tasks_futures test_exceptions_debug \
  test_executors_asyncgens test_fast_entry_points test_loop_defects test_policy_signals \
  test_net_cancel test_net_errors test_net_flow test_net_misc test_net_readers \
  test_net_sockops test_net_transport_paths test_faults test_faults_process \
  test_transport_coalesce test_transport_streams_reader test_transport_datagram test_transport_pipe \
  test_leaks
# valgrind (3.19, Debian 12) does not implement pidfd_open: the core's two pidfd tests fail with
# ENOSYS under it (under valgrind the Python side falls back to asyncio's child watcher by itself).
MEMCHECK_CARGO_SKIP = --skip process::tests::pidfd_reports_exit_and_reaps \
  --skip process::tests::running_child_is_running
MEMCHECK_SKIP = not test_callbacks_scheduled_by_callbacks_run_next_iteration \
  and not test_cancel_purge_while_running and not test_sigint_

.PHONY: test-memcheck
test-memcheck: .venv/$(MEMCHECK_V)/.built ## the core's cargo tests and the loop-core and transport tests (ferroloop side) under valgrind memcheck
	.ci/services.sh valgrind
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$(VALGRIND)" cargo test -q -p ferroloop-core -- $(MEMCHECK_CARGO_SKIP)
	PYTHONMALLOC=malloc $(VALGRIND) .venv/$(MEMCHECK_V)/bin/python -m pytest -q \
	  -k "ferroloop and $(strip $(MEMCHECK_SKIP))" \
	  -o timeout=1200 $(wildcard $(addprefix tests/,$(addsuffix .py,$(MEMCHECK_TESTS))))

SECONDS ?= 600
.PHONY: soak test-soak
soak: .venv/$(V)/.built ## mixed load on ferroloop for SECONDS (default 600): live Python blocks, live malloc memory, RSS and fds sampled every second, judged on the second half (tools/soak.py)
	$(PYTHON) tools/soak.py --seconds $(SECONDS)

# First the checker's self-test: a leak injected on purpose (every server-side transport kept)
# must be found; then 150 s of the mixed load on 3.11, judged after 60 s (tools/soak.py: the
# fitted growth of live Python blocks, live malloc memory, RSS and fds).
test-soak: .venv/3.11/.built ## the soak's self-test (an injected leak must fail it, 60 s), then 150 s of soak judged after 60 s of warm-up, on 3.11
	SOAK_INJECT_LEAK=transports .venv/3.11/bin/python tools/soak.py --seconds 60 --warmup 15 \
	  --only tcp,unix --expect-leak > /dev/null
	.venv/3.11/bin/python tools/soak.py --seconds 150 --warmup 60

.PHONY: bench
bench: bench-deps ## the benchmark suite: asyncio, uvloop, rloop, rsloop and ferroloop side by side (release build); ARGS=--quick etc.
	.venv/3.11/bin/python bench/run.py --markdown $(ARGS)

# rsloop's wheels on PyPI need glibc 2.39: build it once from its sdist into bench/.wheels (gitignored).
RSLOOP_ENV = RUSTUP_TOOLCHAIN=stable RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zcrate-attr=feature(allocator_api)"
.PHONY: bench-deps
bench-deps: ## the release build and the comparison loops of the benchmarks (rsloop built from its sdist once)
	dpkg -s libssl-dev pkg-config openssl >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q libssl-dev pkg-config openssl; }
	$(MAKE) build V=3.11
	.venv/3.11/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements.txt
	ls bench/.wheels/rsloop-*-cp311-*.whl >/dev/null 2>&1 || $(RSLOOP_ENV) .venv/3.11/bin/python -m pip wheel \
	  -q --disable-pip-version-check --no-deps --no-binary rsloop -w bench/.wheels rsloop
	.venv/3.11/bin/python -m pip install -q --disable-pip-version-check --no-index --find-links bench/.wheels rsloop

.PHONY: bench-echo bench-http bench-memory bench-transfer
bench-echo: bench-deps ## echo benchmark (TCP, Unix, UDP, TLS): echo servers on each loop + plain-Rust ceiling, compiled client; ARGS=--quick etc.
	.venv/3.11/bin/python bench/echo/run.py --markdown $(ARGS)

bench-http: bench-deps ## HTTP benchmark: httptools Protocol server and uvicorn on each loop, loaded by wrk; ARGS=--quick etc.
	.venv/3.11/bin/python bench/http/run.py --markdown $(ARGS)

bench-memory: bench-deps ## memory per idle connection (10,000 Protocol and streams connections) on each loop; ARGS=--quick etc.
	.venv/3.11/bin/python bench/echo/memory.py --markdown $(ARGS)

bench-transfer: bench-deps ## 1 GiB one-way TLS transfer into each loop and a plain-Rust TLS server (same cipher); ARGS=--quick etc.
	.venv/3.11/bin/python bench/echo/transfer.py --markdown $(ARGS)

.PHONY: fuzz
fuzz: .venv/$(V)/.built ## differential fuzzing against asyncio for SECONDS (default 60) on V: random programs, traces compared
	$(PYTHON) tests/fuzz/run.py --seconds $(if $(filter command line environment,$(origin SECONDS)),$(SECONDS),60)

.PHONY: check-stubs
check-stubs: .venv/$(V)/.built ## check python/ferroloop/_ferroloop.pyi against the compiled module (mypy stubtest)
	cd /tmp && $(CURDIR)/$(PYTHON) -m mypy.stubtest ferroloop._ferroloop

.PHONY: lint
lint: ## rustfmt check and clippy
	cargo fmt --all -- --check
	cargo clippy --workspace -- -D warnings

# --- release wheels -----------------------------------------------------------------------------
# manylinux2014 (glibc >= 2.17, x86_64) wheels: maturin links with zig (the ziglang package, found
# as `python -m ziglang` of the first python on PATH) against glibc 2.17's symbols.
WHEEL_TOOLS = .venv/3.11/.wheel-tools
WHEEL_BUILD = PATH=$(CURDIR)/.venv/3.11/bin:$$PATH CARGO_TARGET_DIR=$(CURDIR)/target/wheels \
  .venv/3.11/bin/maturin build --release --strip --zig --compatibility manylinux2014
$(WHEEL_TOOLS): .venv/3.11/.ready tools/requirements-wheels.txt
	.venv/3.11/bin/python -m pip install -q --disable-pip-version-check -r tools/requirements-wheels.txt
	touch $@

.PHONY: wheels test-wheel
wheels: $(WHEEL_TOOLS) ## release wheels for $(VERSIONS) (manylinux2014 x86_64) and an sdist in dist/, each installed in a clean venv and smoke-tested
	rm -rf dist
	@for py in $(foreach v,$(VERSIONS),$(call py_of,$(v))); do \
	  echo "wheels: building for $$py"; \
	  $(WHEEL_BUILD) -i $$py --out dist 2>&1 | tail -1; \
	done
	.venv/3.11/bin/maturin sdist --out dist 2>&1 | tail -1
	@for py in $(foreach v,$(VERSIONS),$(call py_of,$(v))); do \
	  tag=$$($$py -c 'import sys; print("cp%d%d" % sys.version_info[:2])'); \
	  .venv/3.11/bin/python tools/check_wheel.py dist/ferroloop-*-$$tag-$$tag-*.whl --python $$py; \
	done
	.venv/3.11/bin/python tools/check_wheel.py dist/ferroloop-*.tar.gz --python $(PY311)
	@ls -l dist

test-wheel: $(WHEEL_TOOLS) ## build the 3.11 release wheel and check it: tags, symbols, clean-venv install, smoke tests
	rm -rf target/wheel-check
	$(WHEEL_BUILD) -i $(PY311) --out target/wheel-check 2>&1 | tail -1
	.venv/3.11/bin/python tools/check_wheel.py target/wheel-check/ferroloop-*-cp311-cp311-*.whl --python $(PY311)

.PHONY: clean
clean: ## remove build products and virtualenvs
	rm -rf target .venv dist conformance/results bench/results bench/echo/target bench/echo/results bench/http/results bench/.wheels
