"""Every check type against real servers on loopback: no mocks for I/O."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from servers import (
    LO,
    Handler,
    aio,
    closed_port,
    http_answer,
    http_handler,
    pid_gone,
    probe,
    resetter,
    tarpit,
    tcp_server,
    udp_server,
    until,
)

from mhd.config.checkspec import CheckSpec
from mhd.health import CheckResult
from mhd.probing.dns import build_query, parse_header
from mhd.probing.exec import EXEC_PATH
from mhd.probing.tcp import Probes
from mhd.probing.timers import timers

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


@aio
async def test_tcp_connect_that_gets_no_answer_times_out() -> None:
    """A listener whose accept queue is full drops SYNs: the connect never completes."""
    with socket.socket() as full:
        full.bind((LO, 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for f in fillers:
                f.setblocking(False)
                f.connect_ex((LO, port))
            await asyncio.sleep(0.05)
            r = await probe(CheckSpec(type="tcp", timeout=0.2), LO, port)
        finally:
            for f in fillers:
                f.close()
    assert (r.ok, r.detail, r.timed_out) == (False, "timeout after 0.2s", True)
    assert 0.2 <= r.latency < 1.0


@aio
async def test_tcp_connect_completed_during_a_stall_is_not_a_timeout() -> None:
    """The kernel finishes the handshake while the loop is blocked past the deadline: completions
    are taken in before deadlines are declared, so this is a success, not a timeout."""
    results: list[CheckResult] = []
    async with tcp_server() as port:
        probes = Probes()
        probes.start(
            CheckSpec(type="tcp", timeout=0.05), LO, port, "", lambda _, r, _end: results.append(r), None
        )
        time.sleep(0.2)  # blocks the loop
        await until(lambda: results)
        await probes.aclose()
    assert (results[0].ok, results[0].detail) == (True, "connected")


@aio
async def test_tcp_source_address() -> None:
    async with tcp_server(http_handler(b""), host="0.0.0.0") as port:
        good = await probe(CheckSpec(type="tcp", source_address="127.0.0.3"), LO, port)
        bad = await probe(CheckSpec(type="tcp", source_address="192.0.2.1"), LO, port)
    assert (good.ok, good.detail, good.local) == (True, "connected", False)
    # A source address the director does not have (or lost) is its own fault, not the server's.
    assert (bad.ok, bad.detail, bad.local) == (False, "cannot assign requested address", True)


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


def hostile(head: bytes, body: bytes = b"", repeat: int = 0, sent: list[int] | None = None) -> Handler:
    """Reads the request, sends ``head`` and ``body``, then ``body`` again ``repeat`` times as long
    as the client reads (``sent`` gets the byte count), and keeps the connection open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head + body)
            total = len(head) + len(body)
            for _ in range(repeat):
                writer.write(body)
                await writer.drain()
                total += len(body)
                if sent is not None:
                    sent[:] = [total]
            await reader.read()  # until the client goes away
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return handle


@aio
async def test_http_huge_chunk_is_read_only_up_to_the_body_limit() -> None:
    """A 10 GB chunk used to be buffered whole (the daemon grew by 700 MB within a 1 s timeout)."""
    sent: list[int] = [0]
    block = b"healthy " * 8192  # 64 KiB
    handler = hostile(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2540BE400\r\n", block, 4096, sent
    )
    async with tcp_server(handler) as port:
        r = await probe(CheckSpec(type="http", body_regex="healthy", timeout=3.0), LO, port)
    assert (r.ok, r.detail) == (True, "HTTP 200, body matches")
    assert sent[0] < 64 * 1024 * 1024  # the server could not push its 256 MiB: nobody read them


@aio
@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: aaaaaaaaaaaaaaaaaaaa\r\n" * 1000 + b"\r\n",
    ],
    ids=["one long line", "many lines"],
)
async def test_http_header_over_16_kib_fails_at_once(head: bytes) -> None:
    async with tcp_server(hostile(head)) as port:
        r = await probe(CheckSpec(type="http", timeout=3.0), LO, port)
    assert (r.ok, r.detail, r.timed_out) == (False, "HTTP header too large", False)


@aio
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 7\n\nhealthy",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\n\nhealthy",
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nhea\n4\nlthy\n0\n\n",
    ],
    ids=["bare LF", "mixed", "chunked bare LF"],
)
async def test_http_bare_lf_answers_are_understood_not_timed_out(answer: bytes) -> None:
    """The server keeps the connection open: a reader waiting for CRLF CRLF would time out."""
    async with tcp_server(hostile(answer)) as port:
        plain = await probe(CheckSpec(type="http", timeout=3.0), LO, port)
        body = await probe(CheckSpec(type="http", body_regex="^healthy$", timeout=3.0), LO, port)
    assert (plain.ok, plain.detail) == (True, "HTTP 200")
    assert (body.ok, body.detail) == (True, "HTTP 200, body matches")


@aio
async def test_http_non_http_banner_fails_at_once() -> None:
    async with tcp_server(hostile(b"SSH-2.0-OpenSSH_9.2\r\n")) as port:
        r = await probe(CheckSpec(type="http", timeout=3.0), LO, port)
    assert (r.ok, r.timed_out) == (False, False) and r.detail.startswith("not an HTTP answer"), r.detail


@aio
async def test_http_endless_chunk_line_fails_at_once() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"x" * 20_000
    async with tcp_server(hostile(answer)) as port:
        r = await probe(CheckSpec(type="http", body_regex="x", timeout=3.0), LO, port)
    assert (r.ok, r.detail) == (False, "HTTP chunk line too long")


@aio
async def test_http_bad_chunk_size_is_a_clear_failure() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
    async with tcp_server(hostile(answer)) as port:
        r = await probe(CheckSpec(type="http", body_regex="x", timeout=3.0), LO, port)
    assert (r.ok, r.detail) == (False, "bad HTTP chunk size: b'zz'")


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
    for kind in ("http", "udp", "dns"):
        lost = await probe(CheckSpec(type=kind, source_address="192.0.2.1"), LO, port)  # type: ignore[arg-type]
        assert (lost.ok, lost.detail, lost.local) == (False, "cannot assign requested address", True)


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
    await until(lambda: pid_gone(sleeper), 2.0)  # the backgrounded grandchild too (same process group)
    assert len(os.listdir("/proc/self/fd")) == fds_before


@aio
@pytest.mark.parametrize("writer", ["yes", "cat /dev/zero"])
async def test_exec_that_keeps_writing_ends_at_once_and_leaks_nothing(writer: str) -> None:
    """It used to hang for ever after the kill: its paused output pipe never reached EOF."""
    spec = CheckSpec(type="exec", command=("/bin/sh", "-c", writer), timeout=2.0)
    fds_before = len(os.listdir("/proc/self/fd"))
    async with asyncio.timeout(10):  # a hang fails here rather than at the harness's bound
        r = await probe(spec, LO, 80)
    assert not r.ok and r.detail.startswith("more than 1 MiB of output"), r.detail
    assert len(os.listdir("/proc/self/fd")) == fds_before


@aio
async def test_exec_ends_when_the_command_exits_whatever_it_left_writing() -> None:
    """A background writer in the command's group holds the pipe open: the command's exit decides."""
    spec = CheckSpec(
        type="exec", command=("/bin/sh", "-c", "yes > /dev/stdout & echo done; exit 0"), timeout=2.0
    )
    async with asyncio.timeout(10):
        r = await probe(spec, LO, 80)
    assert r.ok and r.detail.startswith("exit 0"), r.detail


@aio
async def test_exec_that_writes_slowly_is_killed_at_the_timeout() -> None:
    spec = CheckSpec(
        type="exec", command=("/bin/sh", "-c", "while :; do echo x; sleep 0.01; done"), timeout=0.3
    )
    async with asyncio.timeout(10):
        r = await probe(spec, LO, 80)
    assert (r.ok, r.detail, r.timed_out) == (False, "timeout after 0.3s", True)


@aio
@pytest.mark.parametrize("end", ["wait", "exit 0"])
async def test_exec_grandchild_that_calls_setsid_does_not_survive(tmp_path: Path, end: str) -> None:
    """Out of the command's process group and session: killed once the probe is over, whether the
    command timed out (``wait``) or exited leaving it behind (``exit 0``)."""
    pids = tmp_path / "pids"
    script = f"setsid sleep 30 & echo $! > {pids}; {end}"
    spec = CheckSpec(type="exec", command=("/bin/sh", "-c", script), timeout=0.5)
    r = await probe(spec, LO, 80)
    assert r.ok == (end == "exit 0"), r.detail
    sleeper = int(pids.read_text())
    await until(lambda: pid_gone(sleeper), 3.0)


@aio
async def test_exec_orphan_that_double_forked_during_the_check_does_not_survive(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"(setsid sleep 30 & echo $! > {pids}); sleep 0.2; exit 1"
    r = await probe(CheckSpec(type="exec", command=("/bin/sh", "-c", script), timeout=2.0), LO, 80)
    assert (r.ok, r.detail) == (False, "exit 1")
    await until(lambda: pid_gone(int(pids.read_text())), 3.0)


@aio
async def test_exec_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MHD_TEST_DAEMON_SECRET", "not for checks")
    out = tmp_path / "env"
    spec = CheckSpec(type="exec", command=("/bin/sh", "-c", f"/usr/bin/env > {out}"), port=8443)
    r = await probe(spec, "10.1.2.3", 80, service="web")
    assert r.ok, r.detail
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert "MHD_TEST_DAEMON_SECRET" not in env
    assert env["PATH"] == EXEC_PATH
    assert {k: v for k, v in env.items() if k.startswith("MHD_")} == {
        "MHD_SERVICE": "web", "MHD_SERVER_ADDRESS": "10.1.2.3", "MHD_SERVER_PORT": "8443"}  # fmt: skip


@aio
async def test_exec_probes_leak_no_fd() -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    commands = [("/bin/true",), ("/bin/false",), ("/nonexistent",), ("/bin/sh", "-c", "sleep 5")]
    for command in commands * 5:
        await probe(CheckSpec(type="exec", command=command, timeout=0.1), LO, 80)
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


@aio
async def test_a_burst_of_due_timers_runs_in_slices() -> None:
    """After a stall every check is due at once: the timers yield to the loop between slices."""
    loop = asyncio.get_running_loop()
    alarm = timers(loop)
    order: list[object] = []

    def slow(i: int) -> None:
        time.sleep(0.0002)
        order.append(i)

    for i in range(500):
        alarm.call_at(loop.time(), slow, i)
    loop.call_later(0.002, order.append, "other")
    await until(lambda: len(order) == 501)
    assert 0 < order.index("other") < 250
