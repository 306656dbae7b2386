"""The fast IPVS codec against pyroute2's genlmsg classes, byte for byte (run with 0.7.2 and 0.9.x)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
import sys

import pyroute2
from hypothesis import given
from hypothesis import strategies as st

from mhd import netlink as nl
from mhd.ipvs import CMD, IpvsMessage, decode_dest, decode_service, encode_op
from mhd.model import Dest, DestKey, Service, ServiceKey
from mhd.planner import Op

ipv4 = st.integers(1, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(1, 2**128 - 1).map(ipaddress.IPv6Address)
ports = st.integers(0, 65535)


@st.composite
def services(draw: st.DrawFn) -> Service:
    v6 = draw(st.booleans())
    family = socket.AF_INET6 if v6 else socket.AF_INET
    if draw(st.booleans()):
        key = ServiceKey(family, fwmark=draw(st.integers(1, 2**32 - 1)))
    else:
        addr = draw(ipv6 if v6 else ipv4)
        key = ServiceKey(family, protocol=draw(st.sampled_from([6, 17, 132])), address=addr, port=draw(ports))
    return Service(key, draw(st.sampled_from(["mh", "wrr", "rr"])), draw(st.integers(0, 0x3D)))


@st.composite
def dests(draw: st.DrawFn) -> Dest:
    addr = draw(st.one_of(ipv4, ipv6))
    return Dest(DestKey(addr, draw(ports)), draw(st.integers(1, 65535)), draw(st.sampled_from([0, 2, 3])))


def reference(cmd: int, svc_attrs: list[tuple[str, object]], dest_attrs: list[tuple[str, object]] | None) -> bytes:
    msg = IpvsMessage()
    msg["cmd"] = cmd
    msg["version"] = 1
    attrs: list[tuple[str, object]] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": svc_attrs})]
    if dest_attrs is not None:
        attrs.append(("IPVS_CMD_ATTR_DEST", {"attrs": dest_attrs}))
    msg["attrs"] = attrs
    msg["header"]["type"] = 42
    msg["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_ACK
    msg["header"]["sequence_number"] = 7
    msg.encode()
    return bytes(msg.data)


def ref_service_id(key: ServiceKey) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [("IPVS_SVC_ATTR_AF", key.family)]
    if key.fwmark:
        return [*out, ("IPVS_SVC_ATTR_FWMARK", key.fwmark)]
    assert key.address is not None
    return [
        *out,
        ("IPVS_SVC_ATTR_PROTOCOL", key.protocol),
        ("IPVS_SVC_ATTR_ADDR", key.address.packed.ljust(16, b"\0")),
        ("IPVS_SVC_ATTR_PORT", key.port),
    ]


def ref_dest(d: Dest, full: bool) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [
        ("IPVS_DEST_ATTR_ADDR", d.key.address.packed.ljust(16, b"\0")),
        ("IPVS_DEST_ATTR_PORT", d.key.port),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", socket.AF_INET6 if d.key.address.version == 6 else socket.AF_INET),
    ]
    if full:
        out += [
            ("IPVS_DEST_ATTR_FWD_METHOD", d.forward),
            ("IPVS_DEST_ATTR_WEIGHT", d.weight),
            ("IPVS_DEST_ATTR_U_THRESH", d.u_threshold),
            ("IPVS_DEST_ATTR_L_THRESH", d.l_threshold),
        ]
    return out


def ours(op: Op) -> bytes:
    cmd, payload = encode_op(op)
    return nl.genl_message(42, cmd, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 7, payload)


def test_pyroute2_version_is_reported() -> None:
    assert pyroute2.__version__  # the suite runs once per supported version; see Makefile


def test_ipvs_layer_imports_only_pyroute2_netlink_and_leaves_the_package_importable() -> None:
    """mhd.ipvs skips pyroute2's package __init__ (all of pyroute2); pyroute2 stays whole for others."""
    script = """
import sys
import mhd.ipvs
loaded = sorted(m for m in sys.modules if m.startswith("pyroute2"))
assert "pyroute2" not in sys.modules, "the placeholder parent package was left behind"
assert "pyroute2.iproute" not in sys.modules and len(loaded) < 20, loaded
import pyroute2
from pyroute2.netlink import genlmsg
assert pyroute2.IPRoute and genlmsg in mhd.ipvs.IpvsMessage.__mro__
print(len(loaded))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@given(services())
def test_add_service_matches_pyroute2(svc: Service) -> None:
    netmask = 128 if svc.key.family == socket.AF_INET6 else 0xFFFFFFFF
    expected = reference(
        CMD["NEW_SERVICE"],
        [
            *ref_service_id(svc.key),
            ("IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler),
            ("IPVS_SVC_ATTR_FLAGS", struct.pack("=II", svc.flags, 0xFFFFFFFF)),
            ("IPVS_SVC_ATTR_TIMEOUT", 0),
            ("IPVS_SVC_ATTR_NETMASK", netmask),
        ],
        None,
    )
    assert ours(Op("add-service", svc)) == expected


@given(services(), dests(), st.sampled_from(["add-dest", "edit-dest", "delete-dest"]))
def test_dest_ops_match_pyroute2(svc: Service, dest: Dest, kind: str) -> None:
    cmd = {"add-dest": CMD["NEW_DEST"], "edit-dest": CMD["SET_DEST"], "delete-dest": CMD["DEL_DEST"]}[kind]
    expected = reference(cmd, ref_service_id(svc.key), ref_dest(dest, kind != "delete-dest"))
    assert ours(Op(kind, svc, dest)) == expected  # type: ignore[arg-type]


@given(services(), dests())
def test_decoding_what_pyroute2_encodes(svc: Service, dest: Dest) -> None:
    """A dump reply built by pyroute2 decodes to the same service and destination."""
    svc_msg = reference(
        CMD["NEW_SERVICE"],
        [
            *ref_service_id(svc.key),
            ("IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler),
            ("IPVS_SVC_ATTR_FLAGS", struct.pack("=II", svc.flags | 0x2, 0xFFFFFFFF)),
            ("IPVS_SVC_ATTR_TIMEOUT", 0),
            ("IPVS_SVC_ATTR_NETMASK", 0xFFFFFFFF),
        ],
        None,
    )
    got = decode_service(memoryview(svc_msg)[nl.NLMSGHDR.size :])
    assert got is not None and got.key == svc.key and got.scheduler == svc.scheduler
    assert got.managed_flags == svc.managed_flags
    dest_msg = reference(CMD["NEW_DEST"], ref_service_id(svc.key), ref_dest(dest, True))
    # A GET_DEST reply carries only the DEST attribute; decode_dest ignores the service one.
    got_dest = decode_dest(memoryview(dest_msg)[nl.NLMSGHDR.size :], svc.key.family)
    assert got_dest == dest


@given(st.lists(st.integers(0, 2**64 - 1), min_size=10, max_size=10), st.permutations(range(10)))
def test_counters_decode_alike_in_kernel_order_and_any_other(values: list[int], order: list[int]) -> None:
    """The attribute-by-attribute counters read STATS64 alike in the kernel's order and any other."""
    from mhd.ipvs import DST, _stats

    def stats_attr(kinds: list[int]) -> dict[int, memoryview]:
        inner = b"".join(nl.attr(k + 1, struct.pack("=Q", values[k])) for k in kinds)
        return {DST["STATS64"]: memoryview(nl.attr(DST["STATS64"], inner))[4:]}

    in_order = _stats(stats_attr(list(range(10))), DST["STATS64"], DST["STATS"], (7, 8, 9))
    shuffled = _stats(stats_attr(order), DST["STATS64"], DST["STATS"], (7, 8, 9))
    assert in_order == shuffled
    assert tuple(in_order) == (7, 8, 9, *values[:5])
