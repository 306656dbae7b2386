"""Long-lived TCP connections for the fleet testbed: an echo server and a connection holder.

    python3 fleet_conns.py serve --id ID --port PORT [--bind ADDR]
    python3 fleet_conns.py hold --dst VIP --port PORT --count N [--interval S] [--timeout S]
                                [--concurrency C] [--tick S]

Standard library only, one process, one asyncio loop each: under qemu TCG Python runs ~20x
slower, so everything per message is a Protocol callback (no streams, no task per connection).

`serve`: accepts on ADDR:PORT (default 0.0.0.0), greets each connection with the line
"S<ID>\\n" (so the client learns which real server it landed on) and echoes every byte back.

`hold`: opens COUNT connections to DST:PORT (at most C connecting at once), waits for each
greeting, then keeps every connection busy: each one sends a short line every INTERVAL seconds
(staggered over the interval by a single ticker) and expects the same line back. A connection
is *broken* when it is reset, reaches EOF, returns bytes other than the echo, or leaves an echo
unanswered for TIMEOUT seconds; broken connections are never reopened.

Control over stdin/stdout, one JSON object per line on stdout:
  - after all connections were attempted it prints {"event": "opened", ...report};
  - the line "report" on stdin prints {"event": "report", ...report};
  - "ports" prints {"event": "ports", "ports": [...]}, the local ports of every connection
    that was opened (alive or broken);
  - "close" (or EOF on stdin) closes every connection and exits.
A report: opened, failed_open, alive, broken, broken_by (reason -> n), per_server
(server id -> alive connections), broken_per_server, stalled (alive with an echo outstanding
for more than 2 intervals), echoes (total answered), rtt_max (s), broken_list (the first 200:
[local port, server, reason, seconds since start]), t (seconds since start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter


def _raise_nofile() -> None:
    """Thousands of sockets: lift the open-files limit (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1 << 20, 262144, 65536):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
            return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------------
# echo server


class _Echo(asyncio.Protocol):
    greeting = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.greeting)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def serve(server_id: str, bind: str, port: int) -> None:
    _raise_nofile()

    class Echo(_Echo):
        greeting = f"S{server_id}\n".encode()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, bind, port, backlog=4096, reuse_address=True)
    print(json.dumps({"event": "listening", "id": server_id, "port": port}), flush=True)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------------------
# connection holder


class _Conn(asyncio.Protocol):
    """One held connection; its state is read by the holder's ticker and reports."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        self.transport: asyncio.Transport | None = None
        self.state = "connecting"  # connecting | alive | broken | failed | closed
        self.server = ""
        self.buf = b""
        self.pending = b""  # the line sent and not yet echoed
        self.sent_at = 0.0
        self.seq = 0
        self.lport = 0
        self.greeted: asyncio.Future[None] = holder.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sockname = transport.get_extra_info("sockname")
        self.lport = int(sockname[1]) if sockname else 0

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.server:
            nl = buf.find(b"\n")
            if nl < 0:
                self.buf = buf
                return
            if not buf.startswith(b"S"):
                self.fail("garbled")
                return
            self.server = buf[1:nl].decode(errors="replace")
            buf = buf[nl + 1:]
            if not self.greeted.done():
                self.greeted.set_result(None)
        if self.pending and len(buf) >= len(self.pending):
            if not buf.startswith(self.pending):
                self.fail("garbled")
                return
            buf = buf[len(self.pending):]
            self.holder.echoed(self.holder.loop.time() - self.sent_at)
            self.pending = b""
        if buf and not self.pending.startswith(buf):
            self.fail("garbled")
            return
        self.buf = buf

    def eof_received(self) -> bool | None:
        self.fail("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state in ("alive", "connecting"):
            reason = "eof" if exc is None else (
                "reset" if isinstance(exc, ConnectionResetError) else type(exc).__name__)
            self.fail(reason)
        if not self.greeted.done():
            self.greeted.set_exception(ConnectionError(f"lost before the greeting: {exc}"))

    def fail(self, reason: str) -> None:
        if self.state == "alive":
            self.holder.broke(self, reason)
        self.state = "failed" if self.state == "connecting" else "broken"
        if self.transport is not None:
            self.transport.abort()


class Holder:
    def __init__(self, dst: str, port: int, count: int, interval: float, timeout: float,
                 concurrency: int, tick: float) -> None:
        self.dst, self.port, self.count = dst, port, count
        self.interval, self.timeout, self.concurrency, self.tick = interval, timeout, concurrency, tick
        self.loop = asyncio.get_running_loop()
        self.start = time.monotonic()
        self.conns: list[_Conn] = []
        self.failed_open: Counter[str] = Counter()
        self.broken_by: Counter[str] = Counter()
        self.broken_per_server: Counter[str] = Counter()
        self.broken_list: list[tuple[int, str, str, float]] = []
        self.echoes = 0
        self.rtt_max = 0.0

    def echoed(self, rtt: float) -> None:
        self.echoes += 1
        if rtt > self.rtt_max:
            self.rtt_max = rtt

    def broke(self, conn: _Conn, reason: str) -> None:
        self.broken_by[reason] += 1
        self.broken_per_server[conn.server] += 1
        if len(self.broken_list) < 200:
            self.broken_list.append((conn.lport, conn.server, reason,
                                     round(time.monotonic() - self.start, 3)))

    async def _open_one(self, sem: asyncio.Semaphore) -> None:
        conn = _Conn(self)
        self.conns.append(conn)
        async with sem:
            try:
                # asyncio.timeout, not wait_for: no extra task per connection (CPU under TCG).
                async with asyncio.timeout(self.timeout):
                    await self.loop.create_connection(lambda: conn, self.dst, self.port)
                    await conn.greeted
            except (TimeoutError, OSError, ConnectionError) as exc:
                self.failed_open[type(exc).__name__] += 1
                conn.state = "failed"
                if conn.transport is not None:
                    conn.transport.abort()
                return
        if conn.state == "connecting":
            conn.state = "alive"
        else:
            self.failed_open["lost"] += 1

    async def open_all(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self._open_one(sem) for _ in range(self.count)))

    async def ticker(self) -> None:
        """Every `tick` s, one slice of the connections sends its next line (or times out)."""
        slices = max(1, round(self.interval / self.tick))
        k = 0
        nxt = self.loop.time()
        while True:
            nxt += self.tick
            await asyncio.sleep(max(0.0, nxt - self.loop.time()))
            now = self.loop.time()
            for c in self.conns[k::slices]:
                if c.state != "alive" or c.transport is None:
                    continue
                if c.pending:
                    if now - c.sent_at > self.timeout:
                        c.fail("timeout")
                    continue
                c.seq += 1
                c.pending = b"%d\n" % c.seq
                c.sent_at = now
                c.transport.write(c.pending)
            k = (k + 1) % slices

    def report(self, event: str) -> dict[str, object]:
        now = self.loop.time()
        alive = [c for c in self.conns if c.state == "alive"]
        per_server = Counter(c.server for c in alive)
        stalled = sum(1 for c in alive if c.pending and now - c.sent_at > 2 * self.interval)
        broken = sum(self.broken_by.values())
        return {
            "event": event, "t": round(time.monotonic() - self.start, 3),
            "opened": len(alive) + broken, "failed_open": sum(self.failed_open.values()),
            "failed_open_by": dict(self.failed_open), "alive": len(alive), "broken": broken,
            "broken_by": dict(self.broken_by), "per_server": dict(sorted(per_server.items())),
            "broken_per_server": dict(sorted(self.broken_per_server.items())),
            "stalled": stalled, "echoes": self.echoes, "rtt_max": round(self.rtt_max, 3),
            "broken_list": self.broken_list,
        }

    def close(self) -> None:
        for c in self.conns:
            if c.state == "alive" and c.transport is not None:
                c.state = "closed"
                c.transport.close()


async def hold(args: argparse.Namespace) -> None:
    _raise_nofile()
    h = Holder(args.dst, args.port, args.count, args.interval, args.timeout, args.concurrency,
               args.tick)
    loop = h.loop
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # The ticker starts once every connection was attempted: opening is the costly part
    # under TCG, and echoes competing for the CPU would only slow it down.
    await h.open_all()
    ticker = loop.create_task(h.ticker())
    print(json.dumps(h.report("opened")), flush=True)
    while True:
        line = (await reader.readline()).strip()
        if line == b"report":
            print(json.dumps(h.report("report")), flush=True)
        elif line == b"ports":
            ports = [c.lport for c in h.conns if c.state in ("alive", "broken", "closed")]
            print(json.dumps({"event": "ports", "ports": ports}), flush=True)
        elif line in (b"close", b""):
            break
    ticker.cancel()
    h.close()
    await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--id", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bind", default="0.0.0.0")
    h = sub.add_parser("hold")
    h.add_argument("--dst", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--count", type=int, default=3000)
    h.add_argument("--interval", type=float, default=10.0)
    h.add_argument("--timeout", type=float, default=60.0)
    h.add_argument("--concurrency", type=int, default=100)
    h.add_argument("--tick", type=float, default=0.25)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        asyncio.run(serve(args.id, args.bind, args.port))
    else:
        asyncio.run(hold(args))


if __name__ == "__main__":
    main()
