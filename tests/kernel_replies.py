"""IPVS dump replies byte for byte as Linux fills them (net/netfilter/ipvs/ip_vs_ctl.c): for the
decoding tests, and for bench_pass's dump on the host."""

from __future__ import annotations

import socket
import struct

from mhd import netlink as nl
from mhd.ipvs import CMD_ATTR, DST, SVC
from mhd.model import Dest, Service


def kernel_stats(kind: int, values: list[int], wide: bool) -> bytes:
    """ip_vs_genl_fill_stats(64): 32-bit counters but 64-bit bytes, or ten u64."""
    fmt = ["=I", "=I", "=I", "=Q", "=Q", "=I", "=I", "=I", "=Q", "=Q"]
    return nl.nested(
        kind, [nl.attr(i + 1, struct.pack("=Q" if wide else fmt[i], v & (2**64 - 1 if wide or fmt[i] == "=Q" else 2**32 - 1)))
               for i, v in enumerate(values)]
    )  # fmt: skip


def dest_reply(d: Dest, counters: list[int], conns: tuple[int, int, int], tunnel: bool = True) -> memoryview:
    """ip_vs_genl_fill_dest of Linux 5.3+ (tunnel attributes) or before."""
    family = socket.AF_INET6 if d.key.address.version == 6 else socket.AF_INET
    attrs = [
        nl.attr(DST["ADDR"], d.key.address.packed.ljust(16, b"\0")),
        nl.u16(DST["ADDR_FAMILY"], family),
        nl.be16(DST["PORT"], d.key.port),
        nl.u32(DST["FWD_METHOD"], d.forward),
        nl.u32(DST["WEIGHT"], d.weight),
    ]
    if tunnel:
        attrs += [nl.attr(DST["TUN_TYPE"], b"\0"), nl.be16(DST["TUN_PORT"], 0), nl.u16(DST["TUN_FLAGS"], 0)]
    attrs += [
        nl.u32(DST["U_THRESH"], d.u_threshold),
        nl.u32(DST["L_THRESH"], d.l_threshold),
        nl.u32(DST["ACTIVE_CONNS"], conns[0]),
        nl.u32(DST["INACT_CONNS"], conns[1]),
        nl.u32(DST["PERSIST_CONNS"], conns[2]),
        kernel_stats(DST["STATS"], counters, False),
        kernel_stats(DST["STATS64"], counters, True),
    ]
    return memoryview(nl.GENLMSGHDR.pack(8, 1, 0) + nl.nested(CMD_ATTR["DEST"], attrs))


def service_reply(s: Service, counters: list[int]) -> memoryview:
    """ip_vs_genl_fill_service."""
    k = s.key
    attrs = [nl.u16(SVC["AF"], k.family)]
    if k.fwmark:
        attrs.append(nl.u32(SVC["FWMARK"], k.fwmark))
    else:
        assert k.address is not None
        attrs += [
            nl.u16(SVC["PROTOCOL"], k.protocol),
            nl.attr(SVC["ADDR"], k.address.packed.ljust(16, b"\0")),
            nl.be16(SVC["PORT"], k.port),
        ]
    attrs += [
        nl.string(SVC["SCHED_NAME"], s.scheduler),
        nl.attr(SVC["FLAGS"], struct.pack("=II", s.flags, 0xFFFFFFFF)),
        nl.u32(SVC["TIMEOUT"], s.timeout),
        nl.u32(SVC["NETMASK"], s.netmask),
        kernel_stats(SVC["STATS"], counters, False),
        kernel_stats(SVC["STATS64"], counters, True),
    ]
    return memoryview(nl.GENLMSGHDR.pack(1, 1, 0) + nl.nested(CMD_ATTR["SERVICE"], attrs))
