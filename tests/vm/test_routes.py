"""mhd.routes against the real kernel, in a fresh namespace: mhd's routes and VIP addresses follow the
desired state, an unchanged pass writes nothing, and nothing mhd does not own is ever changed."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import netns as nsh

from mhd.announce import Prefix
from mhd.routes import Kernel, read_owned, sync
from mhd.state import StateDir

TABLE, PROTO = 100, 252
VIP = ipaddress.ip_network("203.0.113.10/32")
VIP_B = ipaddress.ip_network("203.0.113.11/32")
VIP6 = ipaddress.ip_network("2001:db8::10/128")
FOREIGN_ADDR = "192.0.2.99/32"


def routes(ns: str, *args: str) -> list[dict[str, object]]:
    """`ip -j route show ARGS` for both families (protocol 252 has no name in rt_protos: a number)."""
    out: list[dict[str, object]] = []
    for family in ("-4", "-6"):
        proc = nsh.run(["ip", "-n", ns, "-j", family, "route", "show", *args], check=False)
        if proc.returncode and "table does not exist" in proc.stderr:
            continue  # no route of that family was ever put in the table
        assert proc.returncode == 0, proc.stderr
        out += json.loads(proc.stdout or "[]")
    return out


def our_routes(ns: str) -> set[tuple[str, str]]:
    return {
        (str(r["dst"]), str(r.get("type", "unicast")))
        for r in routes(ns, "table", str(TABLE))
        if str(r.get("protocol")) == str(PROTO)
    }


def addresses(ns: str, dev: str) -> set[str]:
    data = json.loads(nsh.run(["ip", "-n", ns, "-j", "addr", "show", "dev", dev]).stdout)
    return {
        f"{a['local']}/{a['prefixlen']}"
        for link in data
        for a in link.get("addr_info", [])
        if a.get("scope") != "link"  # the kernel's own IPv6 link-local address of the dummy
    }


def run_sync(ns: str, state: StateDir, announce: set[Prefix], vips: set[Prefix]) -> tuple[int, list[str]]:
    """One pass with a fresh edge (a restart every time): (writes, failures)."""
    with nsh.in_netns(ns):
        kernel = Kernel.open()
        try:
            result = sync(
                kernel, state, announce=announce, vips=vips, table=TABLE, protocol=PROTO, interface="vip0"
            )
        finally:
            kernel.close()
    return kernel.writes, [f"{op.describe()}: {why}" for op, why in result.failures]


def test_routes_and_addresses_follow_desired_and_leave_the_rest(netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = netns("rt")
    state = StateDir(tmp_path / "state")
    # Someone else's routes: in mhd's table with another protocol, and with mhd's protocol in another table.
    nsh.run(
        [
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "blackhole",
            "198.51.100.0/24",
            "table",
            str(TABLE),
            "proto",
            "static",
        ]
    )
    nsh.run(
        ["ip", "-n", ns, "route", "add", "blackhole", "198.51.100.1/32", "table", "101", "proto", str(PROTO)]
    )
    foreign_routes = (routes(ns, "table", str(TABLE), "proto", "static"), routes(ns, "table", "101"))

    # First pass: the VIP interface is created as a dummy, the VIPs added, two routes announced.
    writes, failures = run_sync(ns, state, {VIP, VIP6}, {VIP, VIP_B, VIP6})
    assert failures == []
    assert writes == 2 + 3 + 2  # link (add, up), three addresses, two routes
    assert our_routes(ns) == {("203.0.113.10", "blackhole"), ("2001:db8::10", "blackhole")}
    assert addresses(ns, "vip0") >= {"203.0.113.10/32", "203.0.113.11/32", "2001:db8::10/128"}
    link = json.loads(nsh.run(["ip", "-n", ns, "-j", "-d", "link", "show", "vip0"]).stdout)[0]
    assert link["linkinfo"]["info_kind"] == "dummy" and "UP" in link["flags"]

    # An operator's address on the same interface, and one that is also a VIP (not mhd's to remove).
    nsh.add_address(ns, "vip0", FOREIGN_ADDR)
    nsh.add_address(ns, "vip0", "203.0.113.12/32")

    # A restart with nothing changed: zero writes.
    assert run_sync(ns, state, {VIP, VIP6}, {VIP, VIP_B, VIP6}) == (0, [])
    with nsh.in_netns(ns):
        kernel = Kernel.open()
        assert kernel.announced(TABLE, PROTO) == {VIP, VIP6}
        kernel.close()
    assert run_sync(ns, state, {VIP, VIP6}, {VIP, VIP_B, VIP6, ipaddress.ip_network("203.0.113.12/32")}) == (
        0,
        [],
    )

    # Withdraw VIP: its route goes, its address stays local.
    assert run_sync(ns, state, {VIP6}, {VIP, VIP_B, VIP6}) == (1, [])
    assert our_routes(ns) == {("2001:db8::10", "blackhole")}
    assert "203.0.113.10/32" in addresses(ns, "vip0")

    # VIP_B and 203.0.113.12 leave the config: mhd's address is removed, the operator's stays.
    assert run_sync(ns, state, {VIP6}, {VIP, VIP6}) == (1, [])
    left = addresses(ns, "vip0")
    assert "203.0.113.11/32" not in left
    assert {FOREIGN_ADDR, "203.0.113.12/32", "203.0.113.10/32", "2001:db8::10/128"} <= left
    assert read_owned(state).addresses == {VIP, VIP6}

    # Drift: an operator deletes mhd's route; the next pass puts it back (and only it).
    nsh.run(["ip", "-n", ns, "-6", "route", "del", "blackhole", "2001:db8::10/128", "table", str(TABLE)])
    assert run_sync(ns, state, {VIP6}, {VIP, VIP6}) == (1, [])
    assert our_routes(ns) == {("2001:db8::10", "blackhole")}

    # Withdraw everything: the foreign routes are exactly as they were.
    assert run_sync(ns, state, set(), {VIP, VIP6}) == (1, [])
    assert our_routes(ns) == set()
    assert (routes(ns, "table", str(TABLE), "proto", "static"), routes(ns, "table", "101")) == foreign_routes
    assert "203.0.113.10/32" in addresses(ns, "vip0")


def test_an_existing_interface_is_used_as_it_is(netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An operator's interface: mhd adds its VIPs there, does not recreate or bring it up, and never
    removes the address the operator had put on it even when it is a VIP."""
    ns = netns("rt")
    nsh.add_dummy(ns, "vip0", ["203.0.113.10/32"])
    state = StateDir(tmp_path / "state")
    assert run_sync(ns, state, set(), {VIP, VIP_B}) == (1, [])
    assert read_owned(state).addresses == {VIP_B} and not read_owned(state).link_created
    assert run_sync(ns, state, set(), set()) == (1, [])
    assert addresses(ns, "vip0") == {"203.0.113.10/32"}
