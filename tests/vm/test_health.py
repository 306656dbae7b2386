"""Health checks against a real kernel: two directors, real HTTP servers, failures and recoveries.

Layout: directors `da` and `db` (each with its own client namespace for UDP flows) reach a server
namespace over veths; the servers' addresses 10.77.0.1-5 live on its loopback. The UDP service's
servers are 10.77.0.N:53 and are checked over HTTP on port 8080 (`check.port`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import netns as nsh
import pytest
from configs import dns_config, http_check
from daemon_proc import Daemon, wait_for

SERVERS = [f"10.77.0.{i}" for i in range(1, 6)]
INTERVAL, FALL, RISE = 2.5, 2, 2  # a 2 s timeout: probes must not time out on a busy TCG guest
SLACK = 15.0  # TCG on a shared 2-core host: generous; bench/ measures the real latency


def config(vip: str) -> str:
    check = http_check(8080, INTERVAL, 2, rise=RISE, fall=FALL)
    return dns_config(vip, reversed(SERVERS), check=check, reconcile_interval="5s")


@dataclass
class Lab:
    directors: list[nsh.Topology]
    daemons: list[Daemon]
    servers_ns: str
    http: dict[str, subprocess.Popen[bytes]]
    python: str
    repo: Path

    def start_http(self, address: str) -> None:
        self.http[address] = subprocess.Popen(
            ["ip", "netns", "exec", self.servers_ns, self.python, str(self.repo / "scripts" / "demo_server.py"),
             "http", address, "8080"],
        )  # fmt: skip

    def stop_http(self, address: str) -> None:
        proc = self.http.pop(address)
        proc.kill()
        proc.wait()

    def dests(self, i: int) -> list[str]:
        saved = nsh.ipvsadm_save(self.directors[i].director)
        assert " -w 0" not in saved, f"a destination with weight 0:\n{saved}"
        return [line.split(" -r ")[1].split()[0] for line in saved.splitlines() if line.startswith("-a ")]


@pytest.fixture
def lab(netns: nsh.NetnsFactory, tmp_path: Path, venv_python: str, repo_root: Path) -> Iterator[Lab]:
    srv = netns("srv")
    for s in SERVERS:
        nsh.run(["ip", "-n", srv, "addr", "add", f"{s}/32", "dev", "lo"])
    directors, daemons = [], []
    for i, name in enumerate(("da", "db")):
        t = nsh.make_topology(netns(name), netns(f"c{name}"))
        nsh.link_servers(t.director, srv, f"10.66.{i + 1}", "10.77.0.0/24", peer=f"to{name}")
        directors.append(t)
        d = Daemon.make(t.director, tmp_path, name, venv_python)
        d.config.write_text(config(t.vip))
        daemons.append(d)
    lab = Lab(directors, daemons, srv, {}, venv_python, repo_root)
    for s in SERVERS:
        lab.start_http(s)
    yield lab
    for d in daemons:
        d.kill()
    for address in list(lab.http):
        lab.stop_http(address)


def test_failures_and_recoveries_keep_directors_identical(lab: Lab, report) -> None:
    everyone = [f"{s}:53" for s in SERVERS]
    for d in lab.daemons:
        d.start()
    for i in (0, 1):
        wait_for(lambda i=i: lab.dests(i) == everyone, 120, f"director {i} to add every healthy server")

    # A server dies: both directors remove it within fall x interval (+ slack).
    victim = SERVERS[2]
    lab.stop_http(victim)
    t0 = time.monotonic()
    without = [e for e in everyone if not e.startswith(victim + ":")]
    for i in (0, 1):
        wait_for(
            lambda i=i: lab.dests(i) == without, FALL * INTERVAL + SLACK, f"director {i} to remove {victim}"
        )
    report(
        f"server down -> removed from both directors in {time.monotonic() - t0:.1f}s (fall x interval = {FALL * INTERVAL:g}s)"
    )
    assert f"delete-dest dns udp:{lab.directors[0].vip}:53 -> {victim}:53" in lab.daemons[0].text()

    # It comes back: re-added, in its canonical position (the lists equal the never-failed one).
    lab.start_http(victim)
    for i in (0, 1):
        wait_for(lambda i=i: lab.dests(i) == everyone, 120, f"director {i} to re-add {victim}")

    # Unreachable from one director only, then healed.
    da = lab.directors[0].director
    nsh.run(["ip", "-n", da, "route", "add", "blackhole", f"{SERVERS[0]}/32"])
    wait_for(
        lambda: lab.dests(0) == everyone[1:],
        FALL * INTERVAL + SLACK,
        "director 0 to drop the blackholed server",
    )
    assert lab.dests(1) == everyone
    nsh.run(["ip", "-n", da, "route", "del", "blackhole", f"{SERVERS[0]}/32"])
    wait_for(lambda: lab.dests(0) == everyone, 120, "director 0 to re-add the healed server")

    # The two directors, with different histories, now hold the same list in the same (canonical)
    # order, and map 20,000 UDP flows identically. A health flap in the middle of the flows (a
    # starved prober on a loaded TCG guest) would invalidate the comparison: then try fresh flows.
    t_a, t_b = lab.directors
    orders = [nsh.ipvs_services(t.director)[f"udp {t.vip}:53"].dest_addrs() for t in (t_a, t_b)]
    assert orders[0] == orders[1] == SERVERS
    for attempt in range(3):
        writes = [d.text().count("-dest ") for d in lab.daemons]
        flows = t_a.flows(20_000, start=attempt * 20_000)
        maps = [nsh.udp_flow_map(t.client, t.director, flows, t.vip, 53) for t in (t_a, t_b)]
        if [d.text().count("-dest ") for d in lab.daemons] == writes:
            break
        report(f"a health transition happened while the flows were sent (attempt {attempt + 1}); again")
    assert len(maps[0]) == len(maps[1]) == 20_000
    differing = [f for f in flows if maps[0][f] != maps[1][f]]
    report(f"after failure, recovery and a one-sided blackhole: {len(differing)} of 20000 flows differ")
    assert not differing, (
        differing[:5],
        [maps[0][f] for f in differing[:5]],
        [maps[1][f] for f in differing[:5]],
    )

    # Every server fails: panic keeps them all (a checker-side problem must not black-hole the VIP).
    for s in SERVERS:
        lab.stop_http(s)
    time.sleep(FALL * INTERVAL + 5)
    for i in (0, 1):
        assert lab.dests(i) == everyone
    assert "panic" in lab.daemons[0].text()
    for d in lab.daemons:
        assert d.stop() == 0
