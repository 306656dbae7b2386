"""Quiesce against remove on the real kernel: two directors that disagree about one server.

Two directors (namespaces, each with its own client namespace) run the same config, 5 servers, one
UDP mh service; each applies it through mhd's own pass (`mhd.reconcile`: membership, planner,
netlink), first with every server healthy, then director B alone sees server 3 fail (the health
verdict its check would give when it cannot reach the server). The same 20,000 flows are sent to
both, and /proc/net/ip_vs_conn says where each went. With `on-failure: quiesce` no flow whose
server is healthy on A differs on B; with `remove` about 0.9 % do (the table was rebuilt). In both
cases the model (`mhd.maglev.predict`, with the slots a quiesced server keeps) predicts every
flow of both kernels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import netns as nsh
import pytest
from configs import dns_config
from test_predict import live_service, model

from mhd.config.records import Config
from mhd.config.validate import loads
from mhd.ipvs import IpvsClient
from mhd.maglev.params import kept_weights
from mhd.maglev.predict import predict
from mhd.membership import HealthView
from mhd.model import DestKey, Service, parse_ip
from mhd.reconcile import Outcome, reconcile
from mhd.state import StateDir

FLOWS = 20_000
PORT = 53


def pass_in(ns: str, config: Config, state_dir: Path, healthy: HealthView) -> Outcome:
    """One reconcile pass of mhd in `ns`, with these health verdicts."""

    async def go() -> Outcome:
        client = await IpvsClient.open()
        try:
            return await reconcile(client, config, StateDir(state_dir), healthy)
        finally:
            client.close()

    with nsh.in_netns(ns):
        outcome = asyncio.run(go())
    assert not outcome.failures
    return outcome


def mispredicted(svc: Service, flows: list[nsh.Flow], seen: dict, config: Config) -> int:  # type: ignore[type-arg]
    picks = predict(svc, flows, model(), kept_weights(config.services[0]))
    return sum(
        1 for f, p in zip(flows, picks, strict=True) if p is None or (str(p.address), p.port) != seen[f]
    )


@pytest.mark.parametrize("policy", ["quiesce", "remove"])
def test_directors_that_disagree_move_no_healthy_flow_with_quiesce(
    netns: nsh.NetnsFactory, tmp_path: Path, policy: str, report
) -> None:
    a = nsh.make_topology(netns("qa"), netns("qca"))
    b = nsh.make_topology(netns("qb"), netns("qcb"))
    servers = [a.rs(i) for i in range(1, 6)]
    config = loads(dns_config(a.vip, servers, extra=f"    on-failure: {policy}\n"), "quiesce.yaml")
    assert config.services[0].on_failure == policy
    failed = DestKey(parse_ip(a.rs(3)), PORT)

    def everyone(_service: str, _server: DestKey) -> bool:
        return True

    def all_but_3(_service: str, server: DestKey) -> bool:
        return server != failed

    pass_in(a.director, config, tmp_path / "a", everyone)
    pass_in(b.director, config, tmp_path / "b", everyone)
    failing = pass_in(b.director, config, tmp_path / "b", all_but_3)
    if policy == "quiesce":  # one weight edit, nothing deleted, the list untouched
        assert [(op.kind, op.dest.weight if op.dest else None) for op in failing.ops] == [("edit-dest", 0)]
        kept = live_service(b.director, b.vip, PORT)
        assert [str(d.key.address) for d in kept.dests] == servers
        assert "mh-fallback" in nsh.ipvsadm_save(b.director)
    else:
        assert [op.kind for op in failing.ops] == ["delete-dest"]

    flows = nsh.make_flows(FLOWS, a.client_net)
    seen_a = nsh.udp_flow_map(a.client, a.director, flows, a.vip, PORT)
    seen_b = nsh.udp_flow_map(b.client, b.director, flows, b.vip, PORT)
    assert len(seen_a) == len(seen_b) == FLOWS
    healthy = [f for f in flows if seen_a[f] != (a.rs(3), PORT)]
    differ = sum(1 for f in healthy if seen_a[f] != seen_b[f])
    wrong_a = mispredicted(live_service(a.director, a.vip, PORT), flows, seen_a, config)
    wrong_b = mispredicted(live_service(b.director, b.vip, PORT), flows, seen_b, config)
    report(
        f"on-failure {policy}: {differ} of {len(healthy)} flows to healthy servers differ between the"
        f" directors ({differ / len(healthy):.2%}); model mismatches {wrong_a} (A) and {wrong_b} (B)"
        f" of {FLOWS}"
    )
    assert wrong_a == wrong_b == 0
    assert all(seen_b[f] != (b.rs(3), PORT) for f in flows)  # B sends nobody to the failed server
    if policy == "quiesce":
        assert differ == 0
    else:
        assert 0 < differ < 0.03 * len(healthy)

    if policy == "quiesce":  # recovery: the weight comes back in place, the directors agree again
        back = pass_in(b.director, config, tmp_path / "b", everyone)
        assert [(op.kind, op.dest.weight if op.dest else None) for op in back.ops] == [("edit-dest", 1)]
        assert nsh.ipvsadm_save(b.director) == nsh.ipvsadm_save(a.director)
        fresh = nsh.make_flows(2000, a.client_net, start=FLOWS)
        again_a = nsh.udp_flow_map(a.client, a.director, fresh, a.vip, PORT)
        again_b = nsh.udp_flow_map(b.client, b.director, fresh, b.vip, PORT)
        assert len(again_a) == len(fresh) and again_a == again_b
