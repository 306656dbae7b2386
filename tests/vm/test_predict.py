"""The Maglev model against the kernel: for each configuration, the server the kernel chose for
20,000 flows (read from /proc/net/ip_vs_conn) equals the prediction, with zero mismatches."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import netns as nsh
import pytest

from mhd import kernel
from mhd.ipvs import IpvsClient
from mhd.maglev.predict import Model, predict
from mhd.model import PROTOCOLS, ServiceKey, parse_ip

FLOWS = 20_000


def live_service(ns: str, vip: str, port: int):  # type: ignore[no-untyped-def]
    address = parse_ip(vip)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    key = ServiceKey(family, protocol=PROTOCOLS["udp"], address=address, port=port)

    async def read():  # type: ignore[no-untyped-def]
        client = await IpvsClient.open()
        try:
            return await client.service(key)
        finally:
            client.close()

    with nsh.in_netns(ns):
        svc = asyncio.run(read())
    assert svc is not None
    return svc


def model() -> Model:
    return Model(kernel.mh_tab_index()[0], kernel.mh_variant() or "intree")


def add_service(
    ns: str, vip: str, port: int, weights: dict[str, int], flags: str | None, order_seed: int
) -> None:
    """Created by hand, destinations in a shuffled order: predictions must follow the kernel's list."""
    host = f"[{vip}]" if ":" in vip else vip
    nsh.ipvsadm(ns, "-A", "-u", f"{host}:{port}", "-s", "mh", *(["-b", flags] if flags else []))
    items = list(weights.items())
    random.Random(order_seed).shuffle(items)
    for rs, w in items:
        rhost = f"[{rs}]" if ":" in rs else rs
        nsh.ipvsadm(ns, "-a", "-u", f"{host}:{port}", "-r", f"{rhost}:{port}", "-m", "-w", str(w))


CASES = {
    # name: (ipv6, weights by server index, mh flags, flows use distinct addresses)
    "weights-1-100-shift": (
        False,
        {i: w for i, w in enumerate([1, 100, 37, 64, 99, 2, 50, 13], 1)},
        "mh-port",
        False,
    ),
    "gcd-3": (False, {i: 3 * w for i, w in enumerate([1, 2, 3, 4, 5, 6], 1)}, "mh-port", False),
    "ipv6-mh-port": (True, dict.fromkeys(range(1, 11), 1), "mh-port", False),
    "no-mh-port-many-addresses": (False, dict.fromkeys(range(1, 13), 1) | {13: 4}, None, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_choice_equals_prediction(topology: nsh.Topology, case: str, report) -> None:
    t = topology
    v6, weight_by_index, flags, many = CASES[case]
    vip = t.vip6 if v6 else t.vip
    port = 2000 + sorted(CASES).index(case)
    weights = {t.rs(i, v6=v6): w for i, w in weight_by_index.items()}
    add_service(t.director, vip, port, weights, flags, order_seed=len(case))
    # A history: remove two servers and add them back (they go to the head of the list).
    host = f"[{vip}]" if v6 else vip
    for rs in list(weights)[:2]:
        rhost = f"[{rs}]" if v6 else rs
        nsh.ipvsadm(t.director, "-d", "-u", f"{host}:{port}", "-r", f"{rhost}:{port}")
        nsh.ipvsadm(
            t.director, "-a", "-u", f"{host}:{port}", "-r", f"{rhost}:{port}", "-m", "-w", str(weights[rs])
        )
    net = t.client_net6 if v6 else t.client_net
    flows = nsh.make_flows(FLOWS, net, addresses=FLOWS if many else 256)
    seen = nsh.udp_flow_map(t.client, t.director, flows, vip, port)
    assert len(seen) == FLOWS
    svc = live_service(t.director, vip, port)
    predicted = predict(svc, flows, model())
    mismatches = sum(
        1
        for f, p in zip(flows, predicted, strict=True)
        if p is None or (str(p.address), p.port) != seen[(str(parse_ip(f[0])), f[1])]
    )
    report(f"maglev {case}: {mismatches} mismatches of {FLOWS} flows")
    assert mismatches == 0


def test_mhctl_predict_reads_the_live_kernel(topology: nsh.Topology, mhd_cmd, tmp_path: Path) -> None:
    t = topology
    add_service(t.director, t.vip, 53, {t.rs(i): i for i in range(1, 6)}, "mh-port", order_seed=1)
    flows = t.flows(2000, start=50_000)
    seen = nsh.udp_flow_map(t.client, t.director, flows, t.vip, 53)
    out = mhd_cmd(t.director, "predict", f"udp:{t.vip}:53", input="\n".join(f"{a}:{p}" for a, p in flows))
    lines = out.stdout.split("\n")
    got = {tuple(line.split()[0].rsplit(":", 1)): line.split()[1] for line in lines if line}
    assert len(got) == len(flows)
    assert all(got[(a, str(p))] == f"{seen[(a, p)][0]}:{seen[(a, p)][1]}" for a, p in flows)
