# mhd: every entry point. `make demo` and `make test` do all setup on a fresh Debian 12 machine (root).
VENV ?= .venv
PY := $(VENV)/bin/python
COMPAT := .venv-pyroute2-0.7/bin/python
HOST_TESTS := tests --ignore=tests/vm

.PHONY: setup demo test lint host-tests compat-tests vm-tests kmod-check pkg-versions pkg-build pkg-vm-test bench clean

setup:
	scripts/setup

## Run mhd on etc/mhd.yaml against real servers (in a VM when this kernel has no IPVS).
demo: setup
	tests/vm/run --shell-cmd 'bash scripts/demo'

## Everything CI runs: lint, host tests (twice: pyroute2 0.9 and 0.7.2), kmod build, Debian packages
## (build + lintian), real-kernel suite, package install test under systemd (with DKMS) in a VM.
test: setup lint host-tests compat-tests kmod-check pkg-build vm-tests pkg-vm-test

lint:
	$(VENV)/bin/ruff check mhd tests bench
	$(VENV)/bin/mypy mhd

host-tests:
	scripts/pytest-status $(PY) -m pytest -q $(HOST_TESTS)

compat-tests:
	$(COMPAT) -m pytest -q -p no:cacheprovider tests/test_ipvs_codec.py  # collecting no test fails here

kmod-check:
	@if ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 && [ -f kmod/Makefile ]; then \
		$(MAKE) -C kmod check; else echo "kmod-check: no kernel headers installed, skipped"; fi

vm-tests:
	tests/vm/run -q

## Debian packages: versions agree (cheap); build + lintian into .vm-work/pkg; install test in a VM.
pkg-versions:
	tests/pkg/check-versions

pkg-build:
	tests/pkg/build

pkg-vm-test:
	tests/pkg/vm-install-test

bench: setup
	$(PY) bench/bench_maglev.py
	$(PY) bench/bench_health.py

clean:
	rm -rf .vm-work .pytest_cache .mypy_cache .ruff_cache .hypothesis
