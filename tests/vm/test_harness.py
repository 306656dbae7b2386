"""Tests of the harness itself, and of the kernel facts the rest of the suite relies on."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import netns as nsh
import pytest


def _mh_service(ns: str, vip: str, port: int, dests: list[str], proto: str = "-u",
                flags: str = "mh-port") -> None:
    target = f"[{vip}]:{port}" if ":" in vip else f"{vip}:{port}"
    rules = [f"-A {proto} {target} -s mh" + (f" -b {flags}" if flags else "")]
    for d in dests:
        dt = f"[{d}]:{port}" if ":" in d else f"{d}:{port}"
        rules.append(f"-a {proto} {target} -r {dt} -m -w 1")
    nsh.ipvsadm(ns, "-R", input="\n".join(rules) + "\n")


def test_ip_vs_mh_module_loaded() -> None:
    assert Path("/proc/net/ip_vs").exists()
    assert Path("/sys/module/ip_vs_mh").exists(), "ip_vs_mh is not loaded"


def test_netns_lo_up_and_cleanup(netns: nsh.NetnsFactory) -> None:
    ns = netns("t")
    assert nsh.netns_exists(ns)
    assert "UP" in nsh.run(["ip", "-n", ns, "-o", "link", "show", "lo"]).stdout
    # A process left running inside is killed when the namespace is deleted.
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    try:
        deadline = time.monotonic() + 30
        while not nsh.netns_pids(ns) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert nsh.netns_pids(ns)
        nsh.delete_netns(ns)
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
    assert not nsh.netns_exists(ns)


def test_ns_run_raises_with_stderr(netns: nsh.NetnsFactory) -> None:
    ns = netns("t")
    with pytest.raises(nsh.CommandError, match=r"No such file|not found"):
        nsh.ns_run(ns, "ls", "/nonexistent-mhd")


def test_in_netns_enters_and_restores(netns: nsh.NetnsFactory) -> None:
    ns = netns("t")
    before = os.readlink("/proc/thread-self/ns/net")
    inside = Path("/run/netns", ns).stat().st_ino
    with nsh.in_netns(ns):
        assert os.stat("/proc/thread-self/ns/net").st_ino == inside
    assert os.readlink("/proc/thread-self/ns/net") == before


def test_lo_down_refuses_destinations(netns: nsh.NetnsFactory) -> None:
    """Kernel fact: in a namespace whose loopback is down every destination gets EINVAL."""
    ns = netns("lodown", lo_up=False)
    nsh.ipvsadm(ns, "-A", "-u", "10.0.100.1:53", "-s", "mh")
    with pytest.raises(nsh.CommandError, match="address not unicast"):
        nsh.ipvsadm(ns, "-a", "-u", "10.0.100.1:53", "-r", "10.1.0.1:53", "-m")
    nsh.run(["ip", "-n", ns, "link", "set", "lo", "up"])
    nsh.ipvsadm(ns, "-a", "-u", "10.0.100.1:53", "-r", "10.1.0.1:53", "-m")


def test_destinations_listed_newest_first(netns: nsh.NetnsFactory) -> None:
    """Kernel fact: a new destination goes to the head of the list (list_add_rcu) and the dump
    returns the head first, so `ipvsadm -Ln --nosort` shows the reverse of the add order."""
    ns = netns("order")
    nsh.ipvsadm(ns, "-A", "-u", "10.0.100.1:53", "-s", "mh", "-b", "mh-port")
    added = ["10.1.0.3", "10.1.0.1", "10.1.0.2"]  # not sorted: plain -Sn would sort them
    for a in added:
        nsh.ipvsadm(ns, "-a", "-u", "10.0.100.1:53", "-r", f"{a}:53", "-m", "-w", "1")
    (listed,) = nsh.parse_ipvsadm_list(nsh.ipvsadm_list(ns))
    assert listed.dest_addrs() == list(reversed(added))
    assert nsh.ipvs_services(ns)["udp 10.0.100.1:53"].dest_addrs() == list(reversed(added))
    assert nsh.ipvsadm_save(ns) == (
        "-A -u 10.0.100.1:53 -s mh -b mh-port\n"
        "-a -u 10.0.100.1:53 -r 10.1.0.2:53 -m -w 1\n"
        "-a -u 10.0.100.1:53 -r 10.1.0.1:53 -m -w 1\n"
        "-a -u 10.0.100.1:53 -r 10.1.0.3:53 -m -w 1\n")
    # ipvsadm itself sorts (and refuses --nosort with -S): plain -Sn is NOT kernel order.
    (plain,) = nsh.parse_ipvsadm_save(nsh.ipvsadm_save(ns, kernel_order=False))
    assert plain.dest_addrs() == sorted(added)
    # Editing a destination keeps its place; removing and re-adding moves it to the head.
    nsh.ipvsadm(ns, "-e", "-u", "10.0.100.1:53", "-r", "10.1.0.3:53", "-m", "-w", "5")
    assert nsh.ipvs_services(ns)["udp 10.0.100.1:53"].dest_addrs() == ["10.1.0.2", "10.1.0.1",
                                                                         "10.1.0.3"]
    nsh.ipvsadm(ns, "-d", "-u", "10.0.100.1:53", "-r", "10.1.0.3:53")
    nsh.ipvsadm(ns, "-a", "-u", "10.0.100.1:53", "-r", "10.1.0.3:53", "-m", "-w", "5")
    assert nsh.ipvs_services(ns)["udp 10.0.100.1:53"].dest_addrs() == ["10.1.0.3", "10.1.0.2",
                                                                         "10.1.0.1"]


def test_parsers_agree_on_a_mixed_configuration(netns: nsh.NetnsFactory) -> None:
    ns = netns("parse")
    rules = """\
-A -u 10.0.100.1:53 -s mh -b mh-fallback,mh-port
-a -u 10.0.100.1:53 -r 10.1.0.1:53 -m -w 1
-a -u 10.0.100.1:53 -r 10.1.0.2:5353 -m -w 2
-A -u 10.0.100.3:5060 -s rr -p 60 -M 255.255.255.0 --pe sip
-A -t [fd00::1]:80 -s wrr -p 300
-a -t [fd00::1]:80 -r [fd01::2]:80 -g -w 0
-a -t [fd00::1]:80 -r [fd01::3]:80 -i -w 5
-A -f 7 -s rr
-a -f 7 -r 10.1.0.9:0 -g -w 1
-A -f 8 -6 -s mh
"""
    nsh.ipvsadm(ns, "-R", input=rules)
    saved = {s.key: s for s in nsh.parse_ipvsadm_save(nsh.ipvsadm_save(ns, kernel_order=False))}
    listed = {s.key: s for s in nsh.parse_ipvsadm_list(nsh.ipvsadm_list(ns))}
    assert set(saved) == {"udp 10.0.100.1:53", "udp 10.0.100.3:5060", "tcp [fd00::1]:80",
                          "fwm 7", "fwm 8 v6"}
    assert set(listed) == set(saved)

    mh = saved["udp 10.0.100.1:53"]
    assert (mh.scheduler, mh.persistent) == ("mh", None)
    assert mh.flags == {"mh-port", "mh-fallback"}
    assert [(d.addr, d.port, d.fwd, d.weight) for d in mh.dests] == [  # sorted by ipvsadm
        ("10.1.0.1", 53, "masq", 1), ("10.1.0.2", 5353, "masq", 2)]
    assert listed["udp 10.0.100.1:53"].flags == mh.flags
    assert [(d.addr, d.port, d.fwd, d.weight) for d in listed["udp 10.0.100.1:53"].dests] == [
        ("10.1.0.2", 5353, "masq", 2), ("10.1.0.1", 53, "masq", 1)]  # kernel order

    sip = saved["udp 10.0.100.3:5060"]
    assert (sip.persistent, sip.netmask, sip.pe, sip.dests) == (60, "255.255.255.0", "sip", [])
    lsip = listed["udp 10.0.100.3:5060"]
    assert (lsip.persistent, lsip.netmask, lsip.pe) == (60, "255.255.255.0", "sip")

    v6 = saved["tcp [fd00::1]:80"]
    assert (v6.af, v6.scheduler, v6.persistent) == (6, "wrr", 300)
    assert [(d.addr, d.fwd, d.weight) for d in v6.dests] == [("fd01::2", "route", 0),
                                                             ("fd01::3", "tunnel", 5)]
    assert v6.dests[1].extra == {"tun-type": "ipip"}
    assert [(d.addr, d.fwd, d.weight) for d in listed["tcp [fd00::1]:80"].dests] == [
        ("fd01::3", "tunnel", 5), ("fd01::2", "route", 0)]
    assert saved["fwm 7"].fwmark == 7 and saved["fwm 7"].dests[0].addr == "10.1.0.9"
    assert saved["fwm 8 v6"].af == 6

    # Kernel order: the same lines, destinations newest first.
    kernel = nsh.ipvs_services(ns)
    assert set(kernel) == set(saved)
    assert kernel["tcp [fd00::1]:80"].dests[0].extra == {"tun-type": "ipip"}
    assert kernel["tcp [fd00::1]:80"].dest_addrs() == ["fd01::3", "fd01::2"]
    assert sorted(nsh.ipvsadm_save(ns).splitlines()) == sorted(
        nsh.ipvsadm_save(ns, kernel_order=False).splitlines())


def test_parse_ip_vs_conn_formats() -> None:
    text = (
        "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
        "UDP 0AC80001 2710 0A006401 0035 0A010002 0035 UDP             299\n"
        "UDP fd02:0000:0000:0000:0000:0000:0000:0001 2711 fd00:0100:0000:0000:0000:0000:0000:0001"
        " 0035 fd01:0000:0000:0000:0000:0000:0000:0003 0035 UDP             298\n"
        "TCP 0AC80001 2710 0A006401 0050 fd01:0000:0000:0000:0000:0000:0000:0002 0050"
        " ESTABLISHED     899\n"
        "UDP 0AC80001 0000 0A006403 13C4 0A010001 13C4 NONE            59 sip 1234@x\n"
    )
    e = nsh.parse_ip_vs_conn(text)
    assert [(c.proto, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport) for c in e] == [
        ("UDP", "10.200.0.1", 10000, "10.0.100.1", 53, "10.1.0.2", 53),
        ("UDP", "fd02::1", 10001, "fd00:100::1", 53, "fd01::3", 53),
        ("TCP", "10.200.0.1", 10000, "10.0.100.1", 80, "fd01::2", 80),
        ("UDP", "10.200.0.1", 0, "10.0.100.3", 5060, "10.1.0.1", 5060),
    ]
    assert e[0].expires == 299 and e[2].state == "ESTABLISHED" and e[3].pe == "sip 1234@x"


def test_make_flows_distinct_and_disjoint() -> None:
    a = nsh.make_flows(20000)
    b = nsh.make_flows(1000, start=20000)
    assert len(set(a)) == 20000 and not set(a) & set(b)
    assert len({addr for addr, _ in a}) == 256


def test_20000_udp_flows_each_mapped_to_a_destination(
    topology: nsh.Topology, report: Callable[[str], None]
) -> None:
    t = topology
    dests = [t.rs(1), t.rs(2), t.rs(3)]
    _mh_service(t.director, t.vip, 53, dests)
    flows = t.flows(20000)

    drops = nsh.softnet_drops()
    t0 = time.monotonic()
    sent = nsh.send_udp_flows(t.client, flows, t.vip, 53)
    t1 = time.monotonic()
    with nsh.in_netns(t.director), open("/proc/thread-self/net/ip_vs_conn") as f:
        text = f.read()
    t2 = time.monotonic()
    nsh.parse_ip_vs_conn(text)
    t3 = time.monotonic()
    seen = nsh.conn_map(t.director, vaddr=t.vip, vport=53)
    t4 = time.monotonic()
    report(f"20000 UDP flows: send {t1 - t0:.1f}s, read /proc/net/ip_vs_conn {t2 - t1:.1f}s,"
           f" parse {t3 - t2:.1f}s, conn_map (read+parse+filter) {t4 - t3:.1f}s")

    assert sent == 20000
    assert nsh.softnet_drops() == drops, "datagrams dropped in the input backlog"
    assert len(seen) == 20000
    assert set(seen) == set(flows)
    assert {rs for rs in seen.values()} == {(d, 53) for d in dests}
    share = Counter(addr for addr, _ in seen.values())
    assert min(share.values()) > 20000 * 0.25, share
    # Kernel state agrees: every entry is counted as an inactive connection of some dest.
    (svc,) = nsh.parse_ipvsadm_list(nsh.ipvsadm_list(t.director))
    assert sum(d.inactive or 0 for d in svc.dests) + sum(d.active or 0 for d in svc.dests) \
        == 20000


def test_udp_flows_ipv6(topology: nsh.Topology) -> None:
    t = topology
    dests = [t.rs(1, v6=True), t.rs(2, v6=True)]
    _mh_service(t.director, t.vip6, 53, dests)
    flows = t.flows6(500, addresses=50)
    got = nsh.udp_flow_map(t.client, t.director, flows, t.vip6, 53)
    assert set(got) == set(flows)
    assert {addr for addr, _ in got.values()} == set(dests)


def test_mh_port_mapping_is_a_function_of_the_flow(
    netns: nsh.NetnsFactory, report: Callable[[str], None]
) -> None:
    """Two directors with the same destinations added in the same order map every flow alike;
    after expiring the entries, the same flows map the same way again."""
    a = nsh.make_topology(netns("dira"), netns("clia"))
    b = nsh.make_topology(netns("dirb"), netns("clib"))
    dests = [a.rs(i) for i in range(1, 6)]
    for t in (a, b):
        _mh_service(t.director, t.vip, 53, dests)
    flows = a.flows(2000, addresses=64)
    ma = nsh.udp_flow_map(a.client, a.director, flows, a.vip, 53)
    mb = nsh.udp_flow_map(b.client, b.director, flows, b.vip, 53)
    assert len(ma) == len(mb) == 2000
    assert ma == mb

    t0 = time.monotonic()
    nsh.expire_udp_conns(a.client, a.director, flows, a.vip, 53)
    report(f"expire_udp_conns of 2000 flows: {time.monotonic() - t0:.1f}s")
    assert nsh.conn_map(a.director) == {}
    assert nsh.get_udp_timeout(a.director)[2] == 300
    assert nsh.udp_flow_map(a.client, a.director, flows, a.vip, 53) == ma


def test_many_explicit_client_addresses(
    topology: nsh.Topology, report: Callable[[str], None]
) -> None:
    """Addresses on a dummy interface, added with one ip -batch, are usable as sources."""
    t = topology
    nsh.add_dummy(t.client, "many0")
    addrs = [f"10.201.{i // 256}.{i % 256}/32" for i in range(1, 4097)]
    t0 = time.monotonic()
    assert nsh.add_addresses(t.client, "many0", addrs) == 4096
    report(f"ip -batch of 4096 addresses: {time.monotonic() - t0:.1f}s")
    count = nsh.run(["ip", "-n", t.client, "-o", "-4", "addr", "show", "dev", "many0"])
    assert len(count.stdout.splitlines()) == 4096
    _mh_service(t.director, t.vip, 53, [t.rs(1), t.rs(2)])
    flows = [(a.split("/")[0], 40000) for a in addrs]
    got = nsh.udp_flow_map(t.client, t.director, flows, t.vip, 53)
    assert len(got) == 4096


def test_mhd_cmd_runs_in_namespace(netns: nsh.NetnsFactory, repo_root: Path) -> None:
    assert (repo_root / "mhd" / "ctl" / "main.py").exists()
    ns = netns("ctl")
    proc = nsh.mhd_cmd(ns, "--help", check=False)
    assert proc.returncode == 0, proc.stderr
