"""The fleet keys of a config (`announce:`, a fwmark service's `announce:` list, `kernel.sysctl:`):
the records they build and every mistake reported at its file:line with the fix."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from mhd.announce import DEFAULT_PROTOCOL, Options
from mhd.config.records import AnnounceConfig
from mhd.config.validate import loads
from mhd.config.yamlsource import ConfigError
from mhd.ctl.main import main as ctl_main

SERVICES = """
services:
  - name: web
    address: 203.0.113.10
    port: 80
    servers: [10.0.0.1]
  - name: marked
    fwmark: 7
    announce: [203.0.113.20, 203.0.113.21]
    servers: [10.0.0.1]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text), "t.yaml")
    return [str(p) for p in info.value.problems]


def test_announce_and_sysctl_build_their_records() -> None:
    config = loads(
        textwrap.dedent("""
        announce:
          table: 100
          vip-interface: vip0
          hold-down: 1m
          panic: withdraw
        kernel:
          sysctl:
            net.ipv4.vs.sloppy_tcp: 0
            net.ipv4.vs.conntrack: null
        """)
        + SERVICES,
        "t.yaml",
    )
    assert config.announce == AnnounceConfig(100, DEFAULT_PROTOCOL, "vip0", 60.0, False)
    assert config.kernel.sysctl == (("conntrack", None), ("sloppy_tcp", 0))
    marked = config.by_name("marked")
    assert marked is not None and marked.announce == tuple(
        ipaddress.ip_address(a) for a in ("203.0.113.20", "203.0.113.21")
    )


def test_without_announce_nothing_is_announced_and_defaults_follow_the_policy() -> None:
    config = loads(SERVICES, "t.yaml")
    assert config.announce is None and config.kernel.sysctl == ()
    announce = loads("announce: {table: 7}\n" + SERVICES, "t.yaml").announce
    assert announce is not None and announce.hold_down == Options().hold_down and announce.announce_panic


def test_every_fleet_mistake_is_placed_and_says_the_fix() -> None:
    out = errors(
        """
        announce:
          protocol: 12
          hold-down: 2h
          vip-interface: "bad name"
          shared: any
        kernel:
          sysctl:
            net.core.somaxconn: 1024
            net.ipv4.vs.sloppy_tcp: "yes"
        services:
          - name: web
            address: 203.0.113.10
            port: 80
            announce: [203.0.113.11]
            servers: [10.0.0.1]
          - name: marked
            fwmark: 7
            announce: [2001:db8::1, nope]
            servers: [10.0.0.1]
        """
    )
    text = "\n".join(out)
    assert "t.yaml:2:1: announce: announce needs table:" in text
    assert "t.yaml:3:13: announce.protocol: announce.protocol 12 (bird) cannot be used" in text
    assert "t.yaml:4:14: announce.hold-down: announce.hold-down must be from 0ms to 1h" in text
    assert "t.yaml:5:18: announce.vip-interface: " in text
    assert "t.yaml:6:3: announce.shared: unknown key 'shared' in announce" in text
    assert (
        "t.yaml:9:5: kernel.sysctl.net.core.somaxconn: kernel.sysctl: net.core.somaxconn is not an IPVS setting"
        in text
    )
    assert (
        "t.yaml:10:5: kernel.sysctl.net.ipv4.vs.sloppy_tcp: kernel.sysctl: net.ipv4.vs.sloppy_tcp must be an integer"
        in text
    )
    assert "t.yaml:15:5: services[0].announce: announce: lists the VIPs of a fwmark service" in text
    assert (
        "t.yaml:19:16: services[1].announce[0]: announce 2001:db8::1 is not of the service's family (ipv4)"
        in text
    )
    assert "t.yaml:19:29: services[1].announce[1]: announce 'nope' is not an IPv4 or IPv6 address" in text
    assert len(out) == 10


@pytest.mark.parametrize(("table", "name"), [(0, "unspec"), (253, "default"), (254, "main"), (255, "local")])
def test_the_kernel_s_own_tables_are_refused(table: int, name: str) -> None:
    out = errors(f"announce: {{table: {table}}}\n" + SERVICES)
    if table == 0:
        assert out == ["t.yaml:1:19: announce.table: announce.table 0 is out of range 1..4294967295"]
    else:
        assert out == [
            f"t.yaml:1:19: announce.table: announce.table {table} ({name}) cannot be used: give a table of "
            "mhd's own (1..252, or 256 and up)"
        ]


@pytest.mark.parametrize("protocol", [0, 2, 4, 186])
def test_the_kernel_s_and_routing_daemons_protocols_are_refused(protocol: int) -> None:
    out = errors(f"announce: {{table: 100, protocol: {protocol}}}\n" + SERVICES)
    assert len(out) == 1 and "t.yaml:1:34: announce.protocol: announce.protocol" in out[0]
    assert ("out of range 1..255" if protocol == 0 else "/etc/iproute2/rt_protos") in out[0]


def test_mhctl_check_prints_fleet_advice_at_the_service_and_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mhd.yaml"
    path.write_text(
        "services:\n  - name: web\n    address: 203.0.113.10\n    port: 80\n    mh-port: false\n"
        "    servers: [10.0.0.1]\n"
    )
    assert ctl_main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}:2: warning: service web: scheduler mh without mh-port" in err and "[mh-port]" in err
    assert "OK, 1 services" in out
