"""UDP checks: send the payload on a connected socket, expect a reply (optionally matching a regex)."""

from __future__ import annotations

import asyncio
import re
import socket

from mhd.config.checkspec import CheckSpec
from mhd.probing.errors import CheckFailed
from mhd.probing.sockets import open_socket


async def check_udp(spec: CheckSpec, address: str, port: int, service: str) -> str:
    sock = open_socket(address, socket.SOCK_DGRAM, spec.source_address)
    try:
        sock.connect((address, port))  # connected: ICMP unreachable surfaces as ECONNREFUSED
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, spec.payload)
        reply = await loop.sock_recv(sock, 65535)
    finally:
        sock.close()
    if spec.expect_regex is not None and re.search(spec.expect_regex, reply) is None:
        raise CheckFailed(f"reply does not match {spec.expect_regex!r}: {reply[:60]!r}")
    return f"reply of {len(reply)} bytes"
