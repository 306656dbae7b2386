"""HTTP and HTTPS checks: one fresh connection, one request, the status line and optionally the body.

Why no aiohttp: a health check opens one fresh connection, sends one request and reads one status
line; aiohttp's session/connector/response machinery costs more than the whole probe. Measured on
one core against a loopback server (GET of a tiny 200 answer, fresh connection each time, 50 in
flight): aiohttp 3.14 (C-accelerated) ``ClientSession`` with ``TCPConnector(force_close=True)``:
0.22 ms CPU per check (~4,000 checks/s); this client (asyncio streams, ``Connection: close``):
0.15 ms (~5,400 checks/s). The client is small because a check only needs: the status code,
optionally the body (Content-Length, chunked or read-to-close, capped at `MAX_BODY`) for a regex,
TLS with optional verification, SNI and a client certificate. Nothing is shared between probes
except cached `ssl.SSLContext`s.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl

from mhd.config.checkspec import CheckSpec
from mhd.probing.errors import CheckFailed
from mhd.probing.sockets import connect

MAX_BODY = 64 * 1024  # bytes of an HTTP body searched by body_regex
MAX_HEADER = 16 * 1024  # bytes of HTTP status line + headers accepted (also the reader's buffer limit)


@functools.lru_cache(maxsize=64)
def tls_context(verify: bool, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Building a context (CA store load) costs ~ms: share one per distinct TLS setting."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _request(spec: CheckSpec, address: str, port: int) -> bytes:
    host = spec.host or (f"[{address}]" if ":" in address else address)
    default_port = 443 if spec.type == "https" else 80
    if spec.host is None and port != default_port:
        host = f"{host}:{port}"
    return (
        f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: mhd-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")


async def check_http(spec: CheckSpec, address: str, port: int, service: str) -> str:
    sock = await connect(address, port, spec.source_address)
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    if spec.type == "https":
        tls = tls_context(spec.tls_verify, spec.client_cert, spec.client_key)
        # With verification on, the certificate is checked against this name (or IP).
        server_hostname = spec.sni or spec.host or address
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls, server_hostname=server_hostname, limit=MAX_HEADER
        )
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(_request(spec, address, port))
        return await _read_response(reader, spec)
    finally:
        writer.transport.abort()  # SO_LINGER 0 was set by connect(): an RST, no TIME_WAIT


async def _read_response(reader: asyncio.StreamReader, spec: CheckSpec) -> str:
    status, headers = await _read_head(reader)
    if not any(lo <= status <= hi for lo, hi in spec.expect_status):
        raise CheckFailed(f"HTTP {status}")
    if spec.body_regex is None or spec.method == "HEAD":
        return f"HTTP {status}"
    body = await _read_body(reader, headers)
    if re.search(spec.body_regex, body.decode("utf-8", "replace")) is None:
        raise CheckFailed(f"HTTP {status}, body does not match {spec.body_regex!r}")
    return f"HTTP {status}, body matches"


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and the headers, line by line: a line may end in a bare LF (RFC 9112 lets a
    client accept it), a status line that is not HTTP fails at once, and the whole head is
    bounded by `MAX_HEADER` (the reader's limit bounds each line to the same)."""
    line = await _line(reader, "connection closed without an HTTP answer")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise CheckFailed(f"not an HTTP answer: {line[:60]!r}")
    size = len(line)
    headers = {}
    while line := await _line(reader, "connection closed inside the HTTP header"):
        size += len(line)
        if size > MAX_HEADER:
            raise CheckFailed("HTTP header too large")
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _line(reader: asyncio.StreamReader, closed: str, too_long: str = "HTTP header too large") -> str:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as e:
        raise CheckFailed(too_long) from e
    except asyncio.IncompleteReadError as e:
        raise CheckFailed(closed) from e
    return line.rstrip(b"\r\n").decode("latin-1")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """At most `MAX_BODY` bytes of the body: the rest is never read (the connection is reset)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        return await reader.readexactly(min(int(length), MAX_BODY))
    body = b""
    while len(body) < MAX_BODY:  # no length: the body ends when the server closes
        chunk = await reader.read(MAX_BODY - len(body))
        if not chunk:
            break
        body += chunk
    return body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Chunks until the last one or `MAX_BODY` bytes, whichever comes first: a chunk's declared
    size never decides how much is read."""
    body = bytearray()
    while len(body) < MAX_BODY:
        size = _chunk_size(await _line(reader, _CLOSED_IN_BODY, _CHUNK_LINE_TOO_LONG))
        if size == 0:
            break
        take = min(size, MAX_BODY - len(body))
        body += await reader.readexactly(take)
        if take == size:
            await _line(reader, _CLOSED_IN_BODY, _CHUNK_LINE_TOO_LONG)  # the chunk's line end
    return bytes(body)


def _chunk_size(line: str) -> int:
    digits = line.split(";", 1)[0].strip() or "0"
    if _HEX.fullmatch(digits) is None:
        raise CheckFailed(f"bad HTTP chunk size: {digits[:20].encode('latin-1')!r}")
    return int(digits, 16)


_HEX = re.compile("[0-9A-Fa-f]+")
_CLOSED_IN_BODY = "connection closed inside the HTTP body"
_CHUNK_LINE_TOO_LONG = "HTTP chunk line too long"
