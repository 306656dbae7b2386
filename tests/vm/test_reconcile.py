"""The foundation against a real kernel: apply, idempotence, in-place edits, ownership, canonical order."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
from dataclasses import replace
from pathlib import Path

import netns as nsh
import pytest
from configs import dns_config

from mhd.config.validate import loads
from mhd.ipvs import (
    _DEST_REPLY,
    _SERVICE_REPLY,
    CMD,
    IpvsClient,
    decode_dest,
    decode_service,
    parse_dest,
    parse_service,
    service_id_attr,
)
from mhd.model import DestKey, Service
from mhd.planner import Desired, plan
from mhd.reconcile import Outcome, reconcile
from mhd.reply_layout import ReplyReader
from mhd.state import StateDir

UDP_PORT = 53


def apply_in(ns: str, text: str, state_dir: Path, *, dry_run: bool = False) -> Outcome:
    """What `mhctl apply` does, in-process (a Python start-up costs seconds under TCG)."""
    config = loads(text, "test.yaml")

    async def go() -> Outcome:
        client = await IpvsClient.open()
        try:
            return await reconcile(client, config, StateDir(state_dir), dry_run=dry_run)
        finally:
            client.close()

    with nsh.in_netns(ns):
        return asyncio.run(go())


def adopting(text: str) -> str:
    """The file with `adopt: true` on its service: take it over from whoever made it."""
    return text.replace("    mh-port: true\n", "    mh-port: true\n    adopt: true\n", 1)


@pytest.fixture
def director(netns: nsh.NetnsFactory) -> nsh.Topology:
    return nsh.make_topology(netns("dir"), netns("cli"))


def test_mhctl_apply_creates_exactly_the_declared_state(
    director: nsh.Topology, mhd_cmd, tmp_path: Path
) -> None:
    t = director
    servers = [t.rs(i) for i in (3, 1, 2)]
    cfg = tmp_path / "mhd.yaml"
    cfg.write_text(dns_config(t.vip, servers, weights={t.rs(2): 3}))
    out = mhd_cmd(t.director, "apply", str(cfg), "--state-dir", str(tmp_path / "state"))
    assert "applied 5 operations" in out.stdout  # staged: add, 3 servers, then the scheduler
    saved = nsh.ipvsadm_save(t.director)
    # Canonical order, head first: 10.1.0.1, .2, .3 whatever the YAML order.
    assert saved.splitlines() == [
        f"-A -u {t.vip}:53 -s mh -b mh-port",
        f"-a -u {t.vip}:53 -r {t.rs(1)}:53 -m -w 1",
        f"-a -u {t.vip}:53 -r {t.rs(2)}:53 -m -w 3",
        f"-a -u {t.vip}:53 -r {t.rs(3)}:53 -m -w 1",
    ]
    # ipvsadm -S sorts; the kernel's own list order (head first) comes from -Ln --nosort.
    assert nsh.ipvs_services(t.director)[f"udp {t.vip}:53"].dest_addrs() == [t.rs(1), t.rs(2), t.rs(3)]
    plan = mhd_cmd(t.director, "plan", str(cfg), "--json", "--state-dir", str(tmp_path / "state"))
    assert plan.stdout.strip() == "[]"


def test_reapply_is_a_no_op_and_edits_happen_in_place(director: nsh.Topology, tmp_path: Path) -> None:
    t = director
    servers = [t.rs(i) for i in range(1, 6)]
    first = apply_in(t.director, dns_config(t.vip, servers), tmp_path)
    assert not first.failures and len(first.ops) == 7  # staged creation: 1 + 5 + 1
    assert apply_in(t.director, dns_config(t.vip, servers), tmp_path).ops == []
    before = nsh.ipvsadm_save(t.director)
    edit = apply_in(t.director, dns_config(t.vip, servers, weights={t.rs(3): 4}), tmp_path)
    assert [op.kind for op in edit.ops] == ["edit-dest"]
    after = nsh.ipvsadm_save(t.director)
    assert after == before.replace(f"-r {t.rs(3)}:53 -m -w 1", f"-r {t.rs(3)}:53 -m -w 4")
    # A flag change is a service edit, not a re-creation: the destinations stay as they are.
    flags = apply_in(
        t.director,
        dns_config(t.vip, servers, weights={t.rs(3): 4}).replace("mh-port: true", "mh-port: false"),
        tmp_path,
    )
    assert [op.kind for op in flags.ops] == ["edit-service"]
    assert nsh.ipvsadm_save(t.director).splitlines()[1:] == after.splitlines()[1:]


def test_staged_creation_cut_short_is_finished_by_the_next_pass(
    director: nsh.Topology, tmp_path: Path
) -> None:
    """A new service is created without a scheduler ("none"), given its servers, then its scheduler.
    The kernel accepts and dumps "none"; a director stopped between the steps is finished in place."""
    t = director
    servers = [t.rs(i) for i in (1, 2, 3)]
    config = loads(dns_config(t.vip, servers), "test.yaml")
    staged = plan({s.key: Desired(s.name, s.service()) for s in config.services}, {})
    assert [op.kind for op in staged] == ["add-service", "add-dest", "add-dest", "add-dest", "edit-service"]

    async def cut_short() -> Service | None:
        client = await IpvsClient.open()
        try:
            assert await client.apply(staged[:3]) == []  # the service and two of its servers
            return (await client.services()).get(staged[0].service.key)
        finally:
            client.close()

    with nsh.in_netns(t.director):
        half = asyncio.run(cut_short())
    assert half is not None and half.scheduler == "none" and len(half.dests) == 2
    StateDir(tmp_path).set_owned({half.key})  # as reconcile records it before writing
    finish = apply_in(t.director, dns_config(t.vip, servers), tmp_path)
    assert not finish.failures
    assert [op.kind for op in finish.ops] == ["add-dest", "edit-service"]
    view = nsh.ipvs_services(t.director)[f"udp {t.vip}:53"]
    assert view.scheduler == "mh" and view.dest_addrs() == [t.rs(1), t.rs(2), t.rs(3)]
    assert apply_in(t.director, dns_config(t.vip, servers), tmp_path).ops == []


def test_staged_creation_with_a_refused_server_stays_off_until_complete(
    director: nsh.Topology, tmp_path: Path
) -> None:
    """The kernel refuses one server of a staged creation (a multicast address: EINVAL). The edit
    that switches the scheduler on is held back, so the service never goes live with part of its
    servers; once the config no longer holds the bad server, the next pass finishes it in place.
    (Before: the pipelined batch switched `mh` on over the servers that happened to get in.)"""
    t = director
    servers = [t.rs(i) for i in (1, 2, 3)]
    svc = loads(dns_config(t.vip, servers), "test.yaml").services[0]
    refused = replace(svc.servers[0].dest(), key=DestKey(ipaddress.ip_address("224.0.0.9"), 53))
    whole = svc.service()
    staged = plan({svc.key: Desired(svc.name, replace(whole, dests=(*whole.dests, refused)))}, {})
    assert [op.kind for op in staged] == ["add-service"] + ["add-dest"] * 4 + ["edit-service"]
    StateDir(tmp_path).set_owned({svc.key})  # as reconcile records it before writing

    async def apply_staged() -> tuple[list[tuple[str, int]], Service | None]:
        client = await IpvsClient.open()
        try:
            failures = await client.apply(staged)
            return [(f.op.kind, f.error.code) for f in failures], await client.service(svc.key)
        finally:
            client.close()

    with nsh.in_netns(t.director):
        failures, half = asyncio.run(apply_staged())
    assert failures == [("add-dest", errno.EINVAL), ("edit-service", errno.ECANCELED)]
    assert half is not None and half.scheduler == "none"
    view = nsh.ipvs_services(t.director)[f"udp {t.vip}:53"]
    assert view.scheduler == "none" and view.dest_addrs() == servers
    finish = apply_in(t.director, dns_config(t.vip, servers), tmp_path)
    assert not finish.failures and [op.kind for op in finish.ops] == ["edit-service"]
    view = nsh.ipvs_services(t.director)[f"udp {t.vip}:53"]
    assert view.scheduler == "mh" and view.dest_addrs() == servers


def test_unmanaged_services_stay_untouched(director: nsh.Topology, tmp_path: Path) -> None:
    t = director
    nsh.ipvsadm(t.director, "-A", "-t", "10.9.9.9:80", "-s", "rr")
    nsh.ipvsadm(t.director, "-a", "-t", "10.9.9.9:80", "-r", "10.1.9.9:80", "-m")
    foreign = [line for line in nsh.ipvsadm_save(t.director).splitlines() if "10.9.9.9" in line]
    outcome = apply_in(t.director, dns_config(t.vip, [t.rs(1)]), tmp_path)
    assert [str(k) for k in outcome.unmanaged] == ["tcp:10.9.9.9:80"]
    assert all("10.9.9.9" not in str(op.service.key) for op in outcome.ops)
    # Removing every service from the config deletes only mhd's own.
    gone = apply_in(t.director, "services: []\n", tmp_path)
    assert [op.kind for op in gone.ops] == ["delete-service"]
    assert [line for line in nsh.ipvsadm_save(t.director).splitlines()] == foreign


def test_a_configured_service_that_is_not_mhds_is_refused_unless_adopted(
    director: nsh.Topology, mhd_cmd, tmp_path: Path
) -> None:
    """A hand-made service at a configured address: not one write to it, not recorded as mhd's,
    not deleted when it leaves the config, and `mhctl plan` says why; `adopt: true` takes it over.
    (Before: its scheduler was changed and its server deleted without a word.)"""
    t = director
    nsh.ipvsadm(t.director, "-A", "-u", f"{t.vip}:53", "-s", "rr")
    nsh.ipvsadm(t.director, "-a", "-u", f"{t.vip}:53", "-r", "10.1.9.9:53", "-m")
    before = nsh.ipvsadm_save(t.director)
    text = dns_config(t.vip, [t.rs(1), t.rs(2)])
    refused = apply_in(t.director, text, tmp_path)
    assert [str(k) for k in refused.refused] == [f"udp:{t.vip}:53"] and refused.ops == []
    assert nsh.ipvsadm_save(t.director) == before and StateDir(tmp_path).owned() == set()
    cfg = tmp_path / "mhd.yaml"
    cfg.write_text(adopting(text))
    plan = mhd_cmd(t.director, "plan", str(cfg), "--state-dir", str(tmp_path))
    assert f"# would adopt dns udp:{t.vip}:53 (adopt: true)" in plan.stdout
    assert apply_in(t.director, "services: []\n", tmp_path).ops == []
    assert nsh.ipvsadm_save(t.director) == before
    adopted = apply_in(t.director, adopting(text), tmp_path)
    assert [str(k) for k in adopted.adopted] == [f"udp:{t.vip}:53"] and not adopted.failures
    view = nsh.ipvs_services(t.director)[f"udp {t.vip}:53"]
    assert view.scheduler == "mh" and view.dest_addrs() == [t.rs(1), t.rs(2)]
    # Owned from now on: managed without the key, and deleted when it leaves the config.
    assert apply_in(t.director, text, tmp_path).ops == []
    assert [op.kind for op in apply_in(t.director, "services: []\n", tmp_path).ops] == ["delete-service"]
    assert nsh.ipvsadm_save(t.director).strip() == ""


def test_canonical_order_gives_identical_mappings_whatever_the_history(
    netns: nsh.NetnsFactory, tmp_path: Path, report
) -> None:
    """Directors fed the same servers in different YAML orders and histories map 20,000 flows alike.

    Control: the same servers added by hand in different orders map flows differently, which is
    what this test would see if canonical order were broken.
    """
    t1 = nsh.make_topology(netns("d1"), netns("c1"))
    t2 = nsh.make_topology(netns("d2"), netns("c2"))
    t3 = nsh.make_topology(netns("d3"), netns("c3"))
    servers = [t1.rs(i) for i in range(1, 21)]
    rng = random.Random(7)
    shuffled = servers[:]
    rng.shuffle(shuffled)
    # Director 1: YAML in address order, applied once.
    apply_in(t1.director, dns_config(t1.vip, servers), tmp_path / "s1")
    # Director 2: another YAML order, and a history: 3 servers fail and recover, one at a time.
    apply_in(t2.director, dns_config(t2.vip, shuffled), tmp_path / "s2")
    for victim in (shuffled[4], shuffled[11], shuffled[0]):
        apply_in(t2.director, dns_config(t2.vip, [s for s in shuffled if s != victim]), tmp_path / "s2")
    apply_in(t2.director, dns_config(t2.vip, list(reversed(shuffled))), tmp_path / "s2")
    # Director 3: servers added by hand in a random order first, then adopted by mhd.
    nsh.ipvsadm(t3.director, "-A", "-u", f"{t3.vip}:53", "-s", "mh", "-b", "mh-port")
    for s in shuffled:
        nsh.ipvsadm(t3.director, "-a", "-u", f"{t3.vip}:53", "-r", f"{s}:53", "-m")
    control_order = nsh.ipvs_services(t3.director)[f"udp {t3.vip}:53"].dest_addrs()
    flows = t1.flows(20_000)
    control = nsh.udp_flow_map(t3.client, t3.director, flows[:5000], t3.vip, UDP_PORT)
    apply_in(t3.director, adopting(dns_config(t3.vip, servers)), tmp_path / "s3")

    saves = [nsh.ipvsadm_save(t.director).replace(t.vip, "VIP") for t in (t1, t2, t3)]
    assert saves[0] == saves[1] == saves[2]
    orders = [nsh.ipvs_services(t.director)[f"udp {t.vip}:53"].dest_addrs() for t in (t1, t2, t3)]
    assert orders[0] == orders[1] == orders[2] == servers  # canonical: by address
    maps = [nsh.udp_flow_map(t.client, t.director, flows, t.vip, UDP_PORT) for t in (t1, t2)]
    assert len(maps[0]) == len(maps[1]) == 20_000
    differing = sum(1 for f in flows if maps[0][f] != maps[1][f])
    report(f"canonical order: {differing} of 20000 flows differ between two histories")
    assert differing == 0
    # The control: a hand-made list in random order maps a share of flows differently.
    assert control_order != servers
    moved = sum(1 for f in control if control[f] != maps[0][f])
    report(f"control without canonical order: {moved} of {len(control)} flows differ")
    assert moved > 0


def test_this_kernels_dump_replies_are_read_in_one_call_each(netns: nsh.NetnsFactory) -> None:
    """The layouts this kernel really sends are the ones `mhd.reply_layout` reads without the
    attribute-by-attribute parse, and read the same: IPv4, IPv6 and fwmark services, NAT, tunnel
    and direct-routing destinations with thresholds."""

    ns = netns("layout")
    nsh.ipvsadm(ns, "-R", input="\n".join([
        "-A -t 10.50.0.1:80 -s mh -b mh-port",
        "-a -t 10.50.0.1:80 -r 10.1.0.1:80 -m -w 3 -x 100 -y 10",
        "-a -t 10.50.0.1:80 -r 10.1.0.2:8080 -i -w 1",
        "-a -t 10.50.0.1:80 -r 10.1.0.3:80 -g -w 0",
        "-A -f 7 -s mh",
        "-a -f 7 -r 10.2.0.1:0 -g -w 2",
        "-A -u [2001:db8::1]:53 -s wrr -p 60",
        "-a -u [2001:db8::1]:53 -r [2001:db8:1::1]:53 -m -w 5",
        "-a -u [2001:db8::1]:53 -r [2001:db8:1::2]:53 -m -w 6",
    ]) + "\n")  # fmt: skip

    async def dump() -> list[tuple[memoryview, int, list[memoryview]]]:
        client = await IpvsClient.open()
        try:
            out = []
            for payload in await client.sock.dump(client.family, CMD["GET_SERVICE"]):
                svc = parse_service(payload)
                assert svc is not None
                request = service_id_attr(svc.key)
                out.append((payload, svc.key.family, await client.sock.dump(client.family, CMD["GET_DEST"], request)))
            return out
        finally:
            client.close()

    with nsh.in_netns(ns):
        replies = asyncio.run(dump())
    assert len(replies) == 3 and sum(len(d) for _, _, d in replies) == 6
    fresh_services, fresh_dests = (  # readers that know no layout yet, configured as mhd.ipvs's
        ReplyReader(r.skip, r.nested, r.wanted, r.optional) for r in (_SERVICE_REPLY, _DEST_REPLY)
    )
    for payload, family, dests in replies:
        assert fresh_services.read(payload) is not None, "a service reply of this kernel is not read in one call"
        assert decode_service(payload) == parse_service(payload)
        for d in dests:
            assert fresh_dests.read(d) is not None, "a destination reply of this kernel is not read in one call"
            assert decode_dest(d, family) == parse_dest(d, family)
