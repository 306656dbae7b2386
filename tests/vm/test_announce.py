"""The real daemon announcing a VIP in a network namespace (issue 13): the route appears in mhd's table
only after the first health verdicts, is withdrawn when the service fails, follows mhctl drain and
undrain while IPVS keeps serving, survives a stop and a restart with zero route writes, and never
touches a foreign route in the same table; the IPVS sysctls are set in the director's namespace."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import netns as nsh
import pytest
from configs import config, service
from daemon_proc import Daemon, wait_for

TABLE, PROTO = 100, 250
FOREIGN = "198.51.100.0/24"


@pytest.fixture
def director(
    netns: nsh.NetnsFactory, tmp_path: Path, venv_python: str
) -> Iterator[tuple[Daemon, nsh.Topology]]:
    t = nsh.make_topology(netns("dir"), netns("cli"))
    d = Daemon.make(t.director, tmp_path, "mhd", venv_python, api_socket=tmp_path / "mhd.sock")
    yield d, t
    d.kill()


def our_routes(ns: str) -> list[str]:
    out = nsh.run(["ip", "-n", ns, "-j", "route", "show", "table", str(TABLE)], check=False)
    routes = json.loads(out.stdout or "[]") if out.returncode == 0 else []
    return sorted(str(r["dst"]) for r in routes if str(r.get("protocol")) == str(PROTO))


def foreign_routes(ns: str) -> str:
    return nsh.run(["ip", "-n", ns, "route", "show", "table", str(TABLE), "proto", "static"]).stdout


def proc_sysctl(ns: str, name: str) -> int:
    with nsh.in_netns(ns):
        return int(Path(f"/proc/sys/net/ipv4/vs/{name}").read_text())


def status(d: Daemon) -> dict:  # type: ignore[type-arg]
    code, _, body = d.request("GET", "/v1/status", unix=True)
    assert code == 200
    return json.loads(body)  # type: ignore[no-any-return]


def test_announce_follows_verdicts_health_drain_and_restarts(
    director: tuple[Daemon, nsh.Topology],
    mhd_cmd,
    report,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    d, t = director
    down = tmp_path / "down"
    check = (
        f'{{type: exec, command: [sh, -c, "test ! -e {down}"], interval: 3s, timeout: 2s, rise: 2, fall: 1}}'
    )
    extra = (
        f"announce: {{table: {TABLE}, hold-down: 0s, panic: withdraw}}\n"
        "kernel: {sysctl: {net.ipv4.vs.conntrack: 1}}\n"
    )
    svc = service("web", t.vip, 80, [t.rs(1), t.rs(2)], protocol="tcp", check=check)
    d.config.write_text(
        extra + config(svc, reconcile_interval="1s", api=f"{{listen: '', socket: {d.api_socket}}}")
    )
    nsh.run(
        ["ip", "-n", t.director, "route", "add", "blackhole", FOREIGN, "table", str(TABLE), "proto", "static"]
    )
    foreign = foreign_routes(t.director)
    vip = f"{t.vip}"

    d.start()  # the first pass and fleet step ran before "ready": no verdict yet, no route
    assert our_routes(t.director) == []
    assert proc_sysctl(t.director, "sloppy_tcp") == 1 and proc_sysctl(t.director, "conntrack") == 1
    text = d.wait_log(f"add-route {vip}/32", 120)  # logged after the decision ("announce VIP: ...")
    assert text.index("-> up") < text.index(f"add-route {vip}/32")  # after a verdict, never before
    assert our_routes(t.director) == [vip]

    # The service fails (every check fails; panic: withdraw): withdrawn at once, IPVS keeps it.
    down.touch()
    wait_for(lambda: our_routes(t.director) == [], 60, "the route withdrawn")
    down.unlink()
    wait_for(lambda: our_routes(t.director) == [vip], 60, "the route back")

    # Drain through mhctl: every route withdrawn, IPVS untouched; undrain brings it back.
    ipvs = nsh.ipvsadm_save(t.director)
    sock = str(d.api_socket)
    out = mhd_cmd(t.director, "drain", "--wait", "--socket", sock).stdout
    assert "every route withdrawn" in out and our_routes(t.director) == []
    assert nsh.ipvsadm_save(t.director) == ipvs and status(d)["fleet"]["drained"]
    mhd_cmd(t.director, "undrain", "--socket", sock)
    wait_for(lambda: our_routes(t.director) == [vip], 60, "the route back after undrain")

    # Drift: a sysctl changed by hand is repaired by the next pass.
    nsh.sysctl(t.director, "net.ipv4.vs.sloppy_tcp", 0)
    wait_for(lambda: proc_sysctl(t.director, "sloppy_tcp") == 1, 30, "sysctl drift repaired")

    # Stop: the route stays. Restart with nothing changed: zero route writes, through the verdicts.
    assert d.stop() == 0
    assert our_routes(t.director) == [vip]
    d.start()
    wait_for(lambda: status(d)["fleet"]["vips"][0]["reason"] == "announceable", 60, "the first verdicts")
    doc = status(d)["fleet"]
    assert doc["route_writes"] == 0 and doc["vips"][0]["announced"], doc
    assert "add-route" not in d.text() and "delete-route" not in d.text()
    assert our_routes(t.director) == [vip] and foreign_routes(t.director) == foreign
    d.signal(signal.SIGTERM)
    report(f"announce: route writes after restart {doc['route_writes']}")
