"""DNS checks: one standard query over UDP, retried over TCP when the answer is truncated; the
answer's rcode decides."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

from mhd.config.checkspec import CheckSpec
from mhd.probing.errors import CheckFailed
from mhd.probing.sockets import connect, open_socket

QTYPES = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
    "AAAA": 28, "SRV": 33, "NAPTR": 35, "DS": 43, "DNSKEY": 48, "CAA": 257, "ANY": 255,
}  # fmt: skip
RCODES = {
    "NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5,
    "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10,
}  # fmt: skip
RCODE_NAMES = {v: k for k, v in RCODES.items()}
_TC = 0x0200
_QR = 0x8000


def qtype_number(name: str) -> int:
    """``A``, ``AAAA``, ... or the generic ``TYPE123`` form."""
    upper = name.upper()
    if upper in QTYPES:
        return QTYPES[upper]
    if upper.startswith("TYPE") and upper[4:].isdigit():
        return int(upper[4:])
    raise ValueError(f"unknown DNS query type {name!r}")


def build_query(qid: int, name: str, qtype: int) -> bytes:
    """A standard query with RD set (what ``dig`` sends), class IN."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    qname = b"".join(bytes([len(enc)]) + enc for enc in (lb.encode("idna") for lb in labels))
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return header + qname + b"\x00" + struct.pack("!HH", qtype, 1)


def parse_header(data: bytes) -> tuple[int, int]:
    """(id, flags) of a DNS message; the rcode is ``flags & 0xF``."""
    if len(data) < 12:
        raise CheckFailed(f"DNS answer too short ({len(data)} bytes)")
    qid, flags = struct.unpack_from("!HH", data)
    return qid, flags


async def check_dns(spec: CheckSpec, address: str, port: int, service: str) -> str:
    qid = random.getrandbits(16)
    query = build_query(qid, spec.query_name, qtype_number(spec.query_type))
    flags = await _dns_udp(spec, address, port, qid, query)
    transport = "udp"
    if flags & _TC:
        flags = await _dns_tcp(spec, address, port, qid, query)
        transport = "tcp"
    rcode = flags & 0xF
    got = RCODE_NAMES.get(rcode, f"RCODE{rcode}")
    if got != spec.expect_rcode.upper():
        raise CheckFailed(f"DNS {got} (expected {spec.expect_rcode.upper()})")
    return f"DNS {got} over {transport}"


async def _dns_udp(spec: CheckSpec, address: str, port: int, qid: int, query: bytes) -> int:
    sock = open_socket(address, socket.SOCK_DGRAM, spec.source_address)
    try:
        sock.connect((address, port))
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, query)
        while True:  # a stray or late answer to an older query: keep waiting for ours
            got, flags = parse_header(await loop.sock_recv(sock, 65535))
            if got == qid and flags & _QR:
                return flags
    finally:
        sock.close()


async def _dns_tcp(spec: CheckSpec, address: str, port: int, qid: int, query: bytes) -> int:
    loop = asyncio.get_running_loop()
    sock = await connect(address, port, spec.source_address)
    try:
        await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
        (length,) = struct.unpack("!H", await _recv_exactly(sock, 2))
        got, flags = parse_header(await _recv_exactly(sock, length))
    finally:
        sock.close()
    if got != qid:
        raise CheckFailed("DNS answer over TCP has the wrong id")
    return flags


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise CheckFailed("connection closed before a complete DNS answer")
        data += chunk
    return data
