"""Every check type against real servers on loopback: no mocks for I/O."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mhd.checkers import CheckResult, build_query, parse_header, probe
from mhd.checkspec import CheckSpec

LO = "127.0.0.1"


def aio(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh loop (no pytest plugin needed)."""

    async def bounded(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(20):  # unlike wait_for, no extra task: tests count tasks
            await fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(bounded(*args, **kwargs))

    return wrapper


# --- servers ----------------------------------------------------------------------------------


def http_answer(status: int, body: bytes = b"ok", chunked: bool = False) -> bytes:
    if chunked:
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:3], body[3:]) if p)
        return b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
            status, payload)  # fmt: skip
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    host: str = LO,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, host, 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def http_handler(answer: bytes, seen: list[bytes] | None = None) -> Callable[..., Awaitable[None]]:
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
    with contextlib.suppress(Exception):
        await reader.read()  # never answers; ends when the client goes away
    writer.close()


async def resetter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        await reader.read(1)
    writer.transport.abort()


def closed_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LO, 0))
        port: int = s.getsockname()[1]
    return port


# --- tcp --------------------------------------------------------------------------------------


@aio
async def test_tcp_connects() -> None:
    async with tcp_server(http_handler(b"")) as port:
        r = await probe(CheckSpec(type="tcp"), LO, port)
    assert (r.ok, r.detail) == (True, "connected")
    assert 0 <= r.latency < 1 and abs(r.at - time.time()) < 5


@aio
async def test_tcp_closed_port_is_refused() -> None:
    r = await probe(CheckSpec(type="tcp"), LO, closed_port())
    assert (r.ok, r.detail) == (False, "connection refused")


@aio
async def test_tcp_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        async with tcp_server(http_handler(b""), host="::1") as port:
            r = await probe(CheckSpec(type="tcp"), "::1", port)
    except OSError:
        pytest.skip("::1 not configured")
    assert r.ok, r.detail


@aio
async def test_check_port_overrides_server_port() -> None:
    async with tcp_server(http_handler(b"")) as port:
        r = await probe(CheckSpec(type="tcp", port=port), LO, closed_port())
    assert r.ok, r.detail


# --- http -------------------------------------------------------------------------------------


@aio
async def test_http_200_ok() -> None:
    async with tcp_server(http_handler(http_answer(200))) as port:
        r = await probe(CheckSpec(type="http"), LO, port)
    assert (r.ok, r.detail) == (True, "HTTP 200")


@aio
async def test_http_500_fails_with_status() -> None:
    async with tcp_server(http_handler(http_answer(500))) as port:
        r = await probe(CheckSpec(type="http"), LO, port)
    assert (r.ok, r.detail) == (False, "HTTP 500")


@aio
async def test_http_expected_status_ranges() -> None:
    spec = CheckSpec(type="http", expect_status=((500, 500), (204, 204)))
    async with tcp_server(http_handler(http_answer(500))) as port:
        assert (await probe(spec, LO, port)).ok
    async with tcp_server(http_handler(http_answer(200))) as port:
        assert not (await probe(spec, LO, port)).ok


@aio
async def test_http_request_line_host_and_method() -> None:
    seen: list[bytes] = []
    spec = CheckSpec(type="http", method="HEAD", path="/healthz?x=1", host="www.example")
    async with tcp_server(http_handler(http_answer(200), seen)) as port:
        r = await probe(spec, LO, port)
        assert r.ok, r.detail
        await probe(CheckSpec(type="http"), LO, port)
    assert seen[0].startswith(b"HEAD /healthz?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: www.example\r\n" in seen[0]
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % port in seen[2]


@aio
async def test_http_body_regex() -> None:
    for chunked in (False, True):
        answer = http_answer(200, b"status: healthy", chunked=chunked)
        async with tcp_server(http_handler(answer)) as port:
            good = await probe(CheckSpec(type="http", body_regex=r"heal+thy"), LO, port)
            bad = await probe(CheckSpec(type="http", body_regex=r"^sick"), LO, port)
        assert (good.ok, good.detail) == (True, "HTTP 200, body matches")
        assert not bad.ok and "body does not match" in bad.detail


@aio
async def test_http_body_read_to_close() -> None:
    answer = b"HTTP/1.0 200 OK\r\n\r\nall good"
    async with tcp_server(http_handler(answer)) as port:
        r = await probe(CheckSpec(type="http", body_regex="good$"), LO, port)
    assert r.ok, r.detail


@aio
async def test_http_tarpit_times_out() -> None:
    async with tcp_server(tarpit) as port:
        r = await probe(CheckSpec(type="http", timeout=0.3), LO, port)
    assert (r.ok, r.detail) == (False, "timeout after 0.3s")
    assert 0.3 <= r.latency < 0.5


@aio
async def test_http_reset() -> None:
    async with tcp_server(resetter) as port:
        r = await probe(CheckSpec(type="http"), LO, port)
    assert not r.ok
    assert r.detail in ("connection reset", "connection closed without an HTTP answer")


@aio
async def test_http_closed_port() -> None:
    r = await probe(CheckSpec(type="http"), LO, closed_port())
    assert (r.ok, r.detail) == (False, "connection refused")


@aio
async def test_http_garbage_answer() -> None:
    async with tcp_server(http_handler(b"SSH-2.0-OpenSSH\r\n\r\n")) as port:
        r = await probe(CheckSpec(type="http"), LO, port)
    assert not r.ok and r.detail.startswith("not an HTTP answer")


@aio
async def test_source_address() -> None:
    seen: list[bytes] = []
    async with tcp_server(http_handler(http_answer(200), seen), host="0.0.0.0") as port:
        r = await probe(CheckSpec(type="http", source_address="127.0.0.2"), LO, port)
    assert r.ok, r.detail
    assert seen[1] == b"127.0.0.2"


# --- https ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_https_verify_off_succeeds_on_self_signed(self_signed: tuple[Path, Path]) -> None:
    async def main() -> CheckResult:
        tls = tls_server_context(*self_signed)
        async with tcp_server(http_handler(http_answer(200)), tls=tls) as port:
            return await probe(CheckSpec(type="https", tls_verify=False), LO, port)

    r = asyncio.run(main())
    assert (r.ok, r.detail) == (True, "HTTP 200")


def test_https_verify_on_fails_with_clear_detail(self_signed: tuple[Path, Path]) -> None:
    async def main() -> CheckResult:
        tls = tls_server_context(*self_signed)
        async with tcp_server(http_handler(http_answer(200)), tls=tls) as port:
            return await probe(CheckSpec(type="https", sni="localhost"), LO, port)

    r = asyncio.run(main())
    assert not r.ok
    assert r.detail.startswith("TLS verify failed:") and "self" in r.detail, r.detail


def test_https_client_certificate_is_presented(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed

    async def main() -> tuple[CheckResult, CheckResult]:
        tls = tls_server_context(cert, key)
        tls.verify_mode = ssl.CERT_REQUIRED
        tls.load_verify_locations(cert)  # trusts exactly our self-signed client certificate
        async with tcp_server(http_handler(http_answer(200)), tls=tls) as port:
            spec = CheckSpec(type="https", tls_verify=False)
            with_cert = await probe(
                CheckSpec(type="https", tls_verify=False, client_cert=str(cert),
                          client_key=str(key)), LO, port)  # fmt: skip
            without = await probe(spec, LO, port)
        return with_cert, without

    with_cert, without = asyncio.run(main())
    assert with_cert.ok, with_cert.detail
    assert not without.ok


# --- udp --------------------------------------------------------------------------------------


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"pong:" + data, addr)


@contextlib.asynccontextmanager
async def udp_server(factory: Callable[[], asyncio.DatagramProtocol]) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(factory, local_addr=(LO, 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


@aio
async def test_udp_echo() -> None:
    async with udp_server(Echo) as port:
        r = await probe(CheckSpec(type="udp", payload=b"ping"), LO, port)
        m = await probe(CheckSpec(type="udp", payload=b"x", expect_regex=rb"^pong:x$"), LO, port)
        n = await probe(CheckSpec(type="udp", payload=b"x", expect_regex=rb"^PONG"), LO, port)
    assert (r.ok, r.detail) == (True, "reply of 9 bytes")
    assert m.ok
    assert not n.ok and "does not match" in n.detail


@aio
async def test_udp_silent_port_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LO, 0))
        r = await probe(CheckSpec(type="udp", timeout=0.2), LO, silent.getsockname()[1])
    assert (r.ok, r.detail) == (False, "timeout after 0.2s")


@aio
async def test_udp_port_unreachable_is_refused() -> None:
    r = await probe(CheckSpec(type="udp", payload=b"x"), LO, closed_port(socket.SOCK_DGRAM))
    assert (r.ok, r.detail) == (False, "connection refused")


# --- dns --------------------------------------------------------------------------------------


def dns_answer(query: bytes, rcode: int, tc: bool = False) -> bytes:
    qid, flags = parse_header(query)
    flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode | (0x0200 if tc else 0)
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + query[12:]


def qname(query: bytes) -> str:
    labels, i = [], 12
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode())
        i += 1 + query[i]
    return ".".join(labels) + "."


def dns_rcode(query: bytes) -> tuple[int, bool]:
    """A tiny zone: exists.test. NOERROR, big.test. truncated over UDP, broken. SERVFAIL."""
    name = qname(query)
    return {"exists.test.": 0, "big.test.": 0, "broken.": 2}.get(name, 3), name == "big.test."


class TinyDNS(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        rcode, big = dns_rcode(data)
        self.transport.sendto(b"\x00\x01junk-wrong-id" + b"\x00" * 12, addr)  # must be ignored
        self.transport.sendto(dns_answer(data, rcode, tc=big), addr)


async def dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    (n,) = struct.unpack("!H", await reader.readexactly(2))
    query = await reader.readexactly(n)
    answer = dns_answer(query, dns_rcode(query)[0])
    writer.write(struct.pack("!H", len(answer)) + answer)
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def dns_server() -> AsyncIterator[int]:
    """UDP and TCP on the same port, as a real server."""
    for _ in range(20):
        async with udp_server(TinyDNS) as port:
            try:
                server = await asyncio.start_server(dns_tcp, LO, port)
            except OSError:
                continue
            try:
                yield port
            finally:
                server.close()
                await server.wait_closed()
            return
    raise RuntimeError("no free port for UDP and TCP")


@aio
async def test_dns_rcodes() -> None:
    async with dns_server() as port:
        ok = await probe(CheckSpec(type="dns", query_name="exists.test"), LO, port)
        nx = await probe(CheckSpec(type="dns", query_name="nope.test"), LO, port)
        nx_expected = await probe(
            CheckSpec(type="dns", query_name="nope.test", expect_rcode="NXDOMAIN"), LO, port
        )
        servfail = await probe(CheckSpec(type="dns", query_name="broken."), LO, port)
    assert (ok.ok, ok.detail) == (True, "DNS NOERROR over udp")
    assert (nx.ok, nx.detail) == (False, "DNS NXDOMAIN (expected NOERROR)")
    assert nx_expected.ok
    assert (servfail.ok, servfail.detail) == (False, "DNS SERVFAIL (expected NOERROR)")


@aio
async def test_dns_truncated_retries_over_tcp() -> None:
    async with dns_server() as port:
        r = await probe(CheckSpec(type="dns", query_name="big.test", query_type="AAAA"), LO, port)
    assert (r.ok, r.detail) == (True, "DNS NOERROR over tcp")


@aio
async def test_dns_no_server() -> None:
    r = await probe(CheckSpec(type="dns"), LO, closed_port(socket.SOCK_DGRAM))
    assert (r.ok, r.detail) == (False, "connection refused")


def test_dns_query_wire_format() -> None:
    q = build_query(0x1234, "www.example.org.", 28)
    assert q[:12] == bytes.fromhex("123401000001000000000000")
    assert q[12:] == b"\x03www\x07example\x03org\x00\x00\x1c\x00\x01"
    assert build_query(1, ".", 2)[12:] == b"\x00\x00\x02\x00\x01"


@aio
async def test_dns_bad_query_type_is_a_failure_not_a_crash() -> None:
    r = await probe(CheckSpec(type="dns", query_type="BOGUS"), LO, 53)
    assert not r.ok and "BOGUS" in r.detail


# --- exec -------------------------------------------------------------------------------------


@aio
async def test_exec_exit_code_and_output() -> None:
    spec = CheckSpec(type="exec", command=("/bin/sh", "-c", "echo lots; echo of; echo oops >&2; exit 3"))
    r = await probe(spec, LO, 80)
    assert (r.ok, r.detail) == (False, "exit 3: lots\nof\noops")


@aio
async def test_exec_success_sees_environment() -> None:
    script = 'echo "$MHD_SERVICE $MHD_SERVER_ADDRESS $MHD_SERVER_PORT"'
    spec = CheckSpec(type="exec", command=("/bin/sh", "-c", script), port=8443)
    r = await probe(spec, "10.1.2.3", 80, service="web")
    assert (r.ok, r.detail) == (True, "exit 0: web 10.1.2.3 8443")


@aio
async def test_exec_output_tail_is_bounded() -> None:
    spec = CheckSpec(type="exec", command=("/bin/sh", "-c", "yes | head -c 100000; exit 1"))
    r = await probe(spec, LO, 80)
    assert not r.ok and r.detail.startswith("exit 1: ") and len(r.detail) <= 220


@aio
async def test_exec_missing_program() -> None:
    r = await probe(CheckSpec(type="exec", command=("/nonexistent/check",)), LO, 80)
    assert not r.ok and "no such file" in r.detail


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"  # a zombie of init is gone for us
    except FileNotFoundError:
        return True


async def wait_gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while not pid_gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@aio
async def test_exec_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $$ $! > {pids}; wait"
    spec = CheckSpec(type="exec", command=("/bin/sh", "-c", script), timeout=0.5)
    fds_before = len(os.listdir("/proc/self/fd"))
    r = await probe(spec, LO, 80)
    assert (r.ok, r.detail) == (False, "timeout after 0.5s")
    assert r.latency < 1.0
    shell, sleeper = map(int, pids.read_text().split())
    assert pid_gone(shell)  # reaped by the probe itself
    assert await wait_gone(sleeper)  # the backgrounded grandchild too (same process group)
    assert len(os.listdir("/proc/self/fd")) == fds_before


@aio
async def test_none_is_always_ok() -> None:
    r = await probe(CheckSpec(type="none"), LO, 1)
    assert (r.ok, r.detail) == (True, "no check")


@aio
async def test_outside_cancel_propagates_and_is_not_a_timeout() -> None:
    """stop() must be able to cancel a probe; only the probe's own deadline is a failure."""
    async with tcp_server(tarpit) as port:
        task = asyncio.ensure_future(probe(CheckSpec(type="http", timeout=5.0), LO, port))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the shared timers keep serving later probes after a cancelled one
        r = await probe(CheckSpec(type="http", timeout=0.1), LO, port)
    assert (r.ok, r.detail) == (False, "timeout after 0.1s")


@aio
async def test_many_concurrent_deadlines_fire_in_order() -> None:
    async with tcp_server(tarpit) as port:
        timeouts = [0.05 * (i % 5 + 1) for i in range(50)]
        results = await asyncio.gather(
            *(probe(CheckSpec(type="http", timeout=t), LO, port) for t in timeouts)
        )
    for t, r in zip(timeouts, results, strict=True):
        assert r.detail == f"timeout after {t:g}s"
        assert t <= r.latency < t + 0.5  # margin for a loaded 2-core CI machine
