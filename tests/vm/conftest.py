"""Fixtures for the real-kernel integration suite (tests/vm).

Run it with tests/vm/run, which boots a kernel with IPVS when this host has none.  Without root
or without IPVS every test here is skipped (reported as skipped, with the reason).

Fixtures:
  netns            factory: netns(prefix="ns", lo_up=True) -> name; all deleted at teardown
  topology         a wired netns_helpers.Topology (director + client namespaces)
  repo_root        Path of the checkout under test
  venv_python      the project venv's python (str)
  mhd_cmd          mhd_cmd(ns, *args, check=True, input=None, timeout=300) -> CompletedProcess
  report           report(msg): print to the terminal despite output capture (timings)
Helpers (import from netns): see tests/vm/README.md.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import netns as nsh  # noqa: E402


@functools.cache
def _skip_reason() -> str | None:
    return nsh.ipvs_unavailable_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/vm as `vm`; skip them all where the kernel can't run them."""
    here = Path(_HERE)
    mine = [it for it in items if here in Path(str(it.path)).resolve().parents]
    if not mine:
        return
    reason = _skip_reason()
    slow_ok = os.environ.get("MHD_VM_SLOW", "") not in ("", "0")
    for it in mine:
        it.add_marker(pytest.mark.vm)
        if reason:
            it.add_marker(pytest.mark.skip(reason=reason))
        elif it.get_closest_marker("slow") and not slow_ok:
            it.add_marker(pytest.mark.skip(reason=SLOW_REASON))


# The end-to-end runs that take many minutes each under emulation (the fleet behind a BGP router with
# thousands of TCP connections, the kill-and-fault chains) run on demand, not in every CI run, which
# must stay well inside its time budget: MHD_VM_SLOW=1 tests/vm/run tests/vm/test_fleet.py
SLOW_REASON = "slow end-to-end run: set MHD_VM_SLOW=1 to run it (see tests/vm/README.md)"


@pytest.fixture
def netns() -> Iterator[nsh.NetnsFactory]:
    """Factory of fresh namespaces (lo up unless lo_up=False); deleted, with any process still
    running inside them, at teardown."""
    factory = nsh.NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def topology(netns: nsh.NetnsFactory) -> nsh.Topology:
    """Director and client namespaces wired as described in netns.Topology."""
    return nsh.make_topology(netns("dir"), netns("cli"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return nsh.repo_root()


@pytest.fixture(scope="session")
def venv_python() -> str:
    return nsh.venv_python()


@pytest.fixture(scope="session")
def report(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """report(msg): print a line to the terminal now, past pytest's output capture (timings).
    Session-scoped, so module fixtures that build a shared testbed can report too."""
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")

    def _report(msg: str) -> None:
        with capman.global_and_fixture_disabled():
            print(f"\n[report] {msg}", flush=True)

    return _report


@pytest.fixture
def mhd_cmd() -> Callable[..., subprocess.CompletedProcess[str]]:
    """mhd_cmd(ns, *args, check=True, input=None, timeout=300): `python -m mhd.ctl ARGS` in ns."""
    return nsh.mhd_cmd
