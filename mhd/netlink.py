"""Generic netlink over an asyncio socket: the thin I/O edge under the IPVS layer.

Why not pyroute2's sockets: their API differs between Debian's 0.7.2 (synchronous) and PyPI's 0.9
(asyncio core), and neither pipelines writes. IPVS accepts many requests in one datagram and acks each
one, so this module sends requests in windows of up to `WINDOW` messages per `send()` and matches acks
by sequence number: a cold apply of 17,000 objects costs ~70 system calls instead of 34,000.

The attribute codec is a few struct calls; `mhd.ipvs` checks it byte for byte against pyroute2's
`genlmsg` classes (tests run with both pyroute2 versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import import_module, util
from types import ModuleType


def pyroute2_netlink() -> ModuleType:
    """`pyroute2.netlink` (the message classes mhd declares its schema on) without pyroute2's
    package `__init__`, which imports every pyroute2 module (IPRoute, NDB, IPDB, nl80211, ...):
    337 modules and 0.13 s on a host, 11 s of a 25 s cold `mhctl apply` in the TCG test VM; the
    message classes alone are 38 modules. The placeholder parent is dropped again, so a later
    `import pyroute2` anywhere in the process runs the real `__init__` and reuses these modules.
    """
    if "pyroute2" in sys.modules or "pyroute2.netlink" in sys.modules:
        return import_module("pyroute2.netlink")
    spec = util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed (Debian: apt install python3-pyroute2)")
    sys.modules["pyroute2"] = util.module_from_spec(spec)  # a package without its __init__ run
    try:
        return import_module("pyroute2.netlink")
    finally:
        del sys.modules["pyroute2"]


NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x02
NLMSG_DONE = 0x03
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
GENLMSGHDR = struct.Struct("=BBH")  # command, version, reserved
NLATTR = struct.Struct("=HH")  # length, type
NLA_TYPE_MASK = 0x3FFF  # an attribute's type without the nested and byte-order flags
WINDOW = 256  # requests in flight; their acks must fit the receive buffer
SLICE = 0.005  # seconds of netlink work between two turns of the event loop (`_take_turns`)
BUFFER = 8 << 20
RECV_SIZE = 64 << 10


# --- attribute codec ------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute: header, payload, padding to 4 bytes."""
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def u16(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=H", value))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def be16(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">H", value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, attrs: Iterable[bytes]) -> bytes:
    return attr(kind, b"".join(attrs))


def parse_attrs(data: bytes | memoryview) -> dict[int, memoryview]:
    """Attributes of one level, by type (the nested flag and byte-order flag masked off)."""
    view = memoryview(data)
    out: dict[int, memoryview] = {}
    offset, end = 0, len(view)
    while offset + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(view, offset)
        if length < NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = view[offset + NLATTR.size : offset + length]
        offset += (length + 3) & ~3
    return out


def get_u16(attrs: dict[int, memoryview], kind: int, default: int = 0) -> int:
    v = attrs.get(kind)
    return struct.unpack_from("=H", v)[0] if v is not None else default


def get_u32(attrs: dict[int, memoryview], kind: int, default: int = 0) -> int:
    v = attrs.get(kind)
    return struct.unpack_from("=I", v)[0] if v is not None else default


def get_u64(attrs: dict[int, memoryview], kind: int, default: int = 0) -> int:
    v = attrs.get(kind)
    return struct.unpack_from("=Q", v)[0] if v is not None else default


def get_be16(attrs: dict[int, memoryview], kind: int, default: int = 0) -> int:
    v = attrs.get(kind)
    return struct.unpack_from(">H", v)[0] if v is not None else default


def get_string(attrs: dict[int, memoryview], kind: int, default: str = "") -> str:
    v = attrs.get(kind)
    return bytes(v).split(b"\0", 1)[0].decode() if v is not None else default


def genl_message(family: int, cmd: int, flags: int, seq: int, payload: bytes, version: int = 1) -> bytes:
    """A complete generic netlink request."""
    body = GENLMSGHDR.pack(cmd, version, 0) + payload
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), family, flags, seq, 0) + body


def messages(data: bytes | memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, sequence, payload) of every netlink message in one datagram."""
    view = memoryview(data)
    offset = 0
    while offset + NLMSGHDR.size <= len(view):
        length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(view, offset)
        if length < NLMSGHDR.size:
            break
        yield kind, flags, seq, view[offset + NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


@dataclass(frozen=True)
class NetlinkError(Exception):
    """The kernel refused a request; `code` is a positive errno."""

    code: int
    message: str = ""

    def __str__(self) -> str:
        text = os.strerror(self.code)
        return f"{text} ({errno.errorcode.get(self.code, self.code)})" + (
            f": {self.message}" if self.message else ""
        )


def _parse_error(payload: memoryview) -> NetlinkError | None:
    """None for an ack; an error with the kernel's extended-ack message otherwise."""
    (code,) = struct.unpack_from("=i", payload)
    if code == 0:
        return None
    # With NETLINK_CAP_ACK the echoed request is only its header; extended-ack attributes follow.
    echoed_len = NLMSGHDR.unpack_from(payload, 4)[0] if len(payload) >= 4 + NLMSGHDR.size else 0
    tlv_start = 4 + max(NLMSGHDR.size, min(echoed_len, NLMSGHDR.size))
    message = (
        get_string(parse_attrs(payload[tlv_start:]), NLMSGERR_ATTR_MSG) if len(payload) > tlv_start else ""
    )
    return NetlinkError(-code, message)


class GenlSocket:
    """A generic netlink socket driven by the asyncio loop: requests in windows, dumps, family lookup.

    One request at a time (an asyncio lock): the kernel processes a socket's messages in order, so
    serialising keeps sequence numbers and replies simple.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        self.sock.setblocking(False)
        self.sock.bind((0, 0))
        for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, BUFFER)
            except OSError:  # not root: the plain option, capped by net.core.*mem_max
                self.sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_NETLINK, option, 1)
        self.seq = 0
        # Dump datagrams are at most 32 KiB (the kernel sizes them by the reader's buffer, capped).
        self._buffer = bytearray(RECV_SIZE)
        self.lock = asyncio.Lock()
        self.writes = 0  # requests that changed (or tried to change) kernel state
        self._turn_at = 0.0  # monotonic: when `_take_turns` next hands the loop a turn

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    async def _take_turns(self) -> None:
        """Give the event loop a turn if this socket has kept it `SLICE` seconds.

        Why: the kernel answers a netlink request inside sendmsg, so the reply is already queued
        when `sock_recv_into` looks, and neither it nor `sock_sendall` ever waits. A dump of 1,000
        services, or 18,000 writes, then ran from start to end without the loop: no probe, no API
        request, no signal (SIGTERM, SIGHUP) in between. In the VM at 16,000 destinations one
        periodic pass held the loop 15-38 s, and a SIGHUP waited for all of it."""
        now = time.monotonic()
        if now >= self._turn_at:
            await asyncio.sleep(0)
            self._turn_at = time.monotonic() + SLICE

    async def _send(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, data)

    async def _recv(self) -> list[bytes]:
        """Every datagram waiting (at least one): an ack is a datagram of its own, so a window of
        256 writes brings 256 of them, read here without going back to the event loop each time."""
        loop = asyncio.get_running_loop()
        view = memoryview(self._buffer)
        size = await loop.sock_recv_into(self.sock, self._buffer)
        out = [bytes(view[:size])]
        while True:
            try:
                size = self.sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return out
            out.append(bytes(view[:size]))

    async def family_id(self, name: str) -> int:
        """The numeric id of a generic netlink family; ENOENT when the module is not loaded."""
        replies = await self.dump(
            GENL_ID_CTRL, CTRL_CMD_GETFAMILY, string(CTRL_ATTR_FAMILY_NAME, name), dump=False
        )
        for payload in replies:
            attrs = parse_attrs(payload[GENLMSGHDR.size :])
            if CTRL_ATTR_FAMILY_ID in attrs:
                return get_u16(attrs, CTRL_ATTR_FAMILY_ID)
        raise NetlinkError(errno.ENOENT, f"no generic netlink family {name}")

    async def dump(
        self, family: int, cmd: int, payload: bytes = b"", *, dump: bool = True
    ) -> list[memoryview]:
        """Send one GET request and collect its replies (the generic header included)."""
        await self._take_turns()
        async with self.lock:
            seq = self._next_seq()
            flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
            await self._send(genl_message(family, cmd, flags, seq, payload))
            out: list[memoryview] = []
            while True:
                for data in await self._recv():
                    for kind, _flags, mseq, body in messages(data):
                        if mseq != seq:
                            continue
                        if kind == NLMSG_DONE:
                            return out
                        if kind == NLMSG_ERROR:
                            error = _parse_error(body)
                            if error is not None:
                                raise error
                            return out  # the ack of a non-dump request
                        out.append(body)

    async def transact(self, family: int, requests: list[tuple[int, bytes]]) -> list[NetlinkError | None]:
        """Send (cmd, payload) write requests in windows; return each one's error or None, in order.

        The kernel carries on after a failed request, exactly as if they had been sent one by one; the
        caller decides what a failure means for the requests that depended on it.
        """
        results: list[NetlinkError | None] = [None] * len(requests)
        async with self.lock:
            for start in range(0, len(requests), WINDOW):
                await self._take_turns()  # the lock stays held: the writes stay in order
                window = requests[start : start + WINDOW]
                first = self._next_seq()
                self.seq = (first + len(window) - 1) & 0xFFFFFFFF
                seqs = {(first + i) & 0xFFFFFFFF: start + i for i in range(len(window))}
                flags = NLM_F_REQUEST | NLM_F_ACK
                data = b"".join(
                    genl_message(family, cmd, flags, (first + i) & 0xFFFFFFFF, payload)
                    for i, (cmd, payload) in enumerate(window)
                )
                self.writes += len(window)
                await self._send(data)
                while seqs:
                    for data in await self._recv():
                        for kind, _flags, seq, body in messages(data):
                            if kind == NLMSG_ERROR and seq in seqs:
                                results[seqs.pop(seq)] = _parse_error(body)
        return results
