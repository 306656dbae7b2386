"""Loopback servers, small async helpers and `probe` (one awaited probe) for the checker and prober tests.

Real sockets only: a health check is judged against servers that behave like the real ones
(answer, refuse, reset, never answer). Imported by name (``from servers import ...``): pytest
puts this directory on ``sys.path`` for the test modules in it, which are not a package.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult
from mhd.probing.tcp import Probes

LO = "127.0.0.1"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def aio(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh loop (no pytest plugin needed), bounded to 20 s."""

    async def bounded(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(20):  # unlike wait_for, no extra task: tests count tasks
            await fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(bounded(*args, **kwargs))

    return wrapper


async def until(cond: Callable[[], object], within: float = 3.0) -> None:
    """Poll ``cond`` every 10 ms until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def closed_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A loopback port that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LO, 0))
        port: int = s.getsockname()[1]
    return port


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"  # a zombie of init is gone for us
    except FileNotFoundError:
        return True


async def probe(spec: CheckSpec, address: str, port: int, *, service: str = "") -> CheckResult:
    """One probe of ``address`` (probe port resolved here) through the prober's engine, awaited."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[CheckResult] = loop.create_future()

    def resolve(_: None, result: CheckResult, ended: float) -> None:
        if not answer.done():
            answer.set_result(result)

    probes = Probes(loop)
    try:
        probes.start(spec, address, spec.probe_port(port), service, resolve, None)
        return await answer
    finally:
        await probes.aclose()


# --- TCP servers ------------------------------------------------------------------------------


def http_answer(status: int, body: bytes = b"ok", chunked: bool = False) -> bytes:
    if chunked:
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:3], body[3:]) if p)
        return b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
            status, payload)  # fmt: skip
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def http_handler(answer: bytes, seen: list[bytes] | None = None) -> Handler:
    """Reads one request head, sends ``answer``, closes; ``seen`` gets the request and the
    client's address."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            if seen is not None:
                seen.append(request)
                seen.append(str(writer.get_extra_info("peername")[0]).encode())
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return handle


async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and never answers; ends when the client goes away."""
    with contextlib.suppress(Exception):
        await reader.read()
    writer.close()


async def resetter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, then resets the connection."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        await reader.read(1)
    writer.transport.abort()


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Handler | None = None, host: str = LO, tls: ssl.SSLContext | None = None, port: int = 0
) -> AsyncIterator[int]:
    """A listening server on ``port`` or an ephemeral one (yielded); by default it answers HTTP 200."""
    server = await asyncio.start_server(handler or http_handler(http_answer(200, b"")), host, port, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# --- UDP servers ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def udp_server(factory: Callable[[], asyncio.DatagramProtocol]) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(factory, local_addr=(LO, 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()
