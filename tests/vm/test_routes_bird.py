"""mhd's announce routes through a real BIRD 2: the director's BIRD imports mhd's blackhole routes
from table 100 (protocol 252, learned as alien routes) and exports them over BGP with next-hop self;
the router installs the VIP via the director; a withdrawal by mhd removes it from the router.
This is the reason for the route type `mhd.routes` uses (see its docstring)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import netns as nsh
import pytest
from test_routes import PROTO, TABLE, VIP, run_sync

from mhd.announce import Prefix
from mhd.state import StateDir

pytestmark = pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")


def director_conf() -> str:
    """tests/vm/bird-director.conf (a compact director config; the commented one operators copy is etc/bird/mhd-director.conf), with this topology's addresses."""
    text = (nsh.repo_root() / "tests" / "vm" / "bird-director.conf").read_text()
    for old, new in (
        ("router id 192.0.2.11;", "router id 10.9.0.1;"),
        ("neighbor 192.0.2.1 as", "neighbor 10.9.0.2 as"),
    ):
        assert old in text, f"tests/vm/bird-director.conf no longer has {old!r}: update this test"
        text = text.replace(old, new)
    assert f"kernel table {TABLE};" in text and f"krt_source = {PROTO};" in text
    return "log stderr all;\n" + text


ROUTER_CONF = """
log stderr all;
router id 10.9.0.2;
protocol device { }
protocol kernel { ipv4 { import none; export all; }; }
protocol bgp director1 {
  local 10.9.0.2 as 65000;
  neighbor 10.9.0.1 as 65001;
  hold time 9; connect retry time 2;
  ipv4 { import all; export none; };
}
"""


def start_bird(ns: str, conf: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    path = tmp_path / f"{ns}.conf"
    path.write_text(conf)
    log = open(tmp_path / f"{ns}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(path), "-s", f"/run/bird-{ns}.ctl"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def birds(netns, tmp_path: Path) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    director, router = netns("bd"), netns("br")
    nsh.veth(
        director,
        router,
        addrs_a=["10.9.0.1/24"],
        addrs_b=["10.9.0.2/24"],
        mac_a="02:00:00:09:00:01",
        mac_b="02:00:00:09:00:02",
    )
    procs = [start_bird(director, director_conf(), tmp_path), start_bird(router, ROUTER_CONF, tmp_path)]
    try:
        yield director, router
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def router_route(router: str) -> str:
    return nsh.run(["ip", "-n", router, "route", "show", str(VIP)]).stdout.strip()


def wait_for(predicate, what: str, timeout: float = 120.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(what)
        time.sleep(0.5)
    return time.monotonic() - start


def test_bird_exports_mhd_routes_and_withdraws_them(birds: tuple[str, str], tmp_path: Path, report) -> None:  # type: ignore[no-untyped-def]
    director, router = birds
    state = StateDir(tmp_path / "state")

    def announce(prefixes: set[Prefix]) -> None:
        assert run_sync(director, state, prefixes, {VIP})[1] == []

    # A foreign route in the same table with another protocol: BIRD's filter leaves it out.
    foreign = "ip route add blackhole 198.51.100.0/24 table 100 proto static"
    nsh.run(["ip", "-n", director, *foreign.split()[1:]])
    announce({VIP})
    took = wait_for(lambda: "via 10.9.0.1" in router_route(router), "the router never learned the VIP")
    report(
        f"BIRD: VIP on the router {took:.1f}s after mhd's route (scan time 2s, TCG): {router_route(router)}"
    )
    assert "proto bird" in router_route(router)
    assert nsh.run(["ip", "-n", router, "route", "show", "198.51.100.0/24"]).stdout.strip() == ""

    announce(set())
    took = wait_for(lambda: router_route(router) == "", "the router kept the withdrawn VIP")
    report(f"BIRD: VIP gone from the router {took:.1f}s after mhd's withdrawal")
    # The director still has the VIP as a local address (in-flight packets are served).
    assert "203.0.113.10/32" in nsh.run(["ip", "-n", director, "addr", "show", "dev", "vip0"]).stdout
