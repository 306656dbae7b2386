"""One probe per distinct (server address, port, check settings), whatever the number of services
that use it: counted at real loopback servers, through the daemon's targets and the real prober;
and the status says which services share a server's probe."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

from fakes import FakeDaemon
from servers import LO, aio, tcp_server

from mhd.api.status import SHARED_SHOWN, status
from mhd.config.validate import loads
from mhd.daemon import targets
from mhd.probing.prober import Prober

SERVICES, SERVERS = 1000, 16
INTERVAL = 0.3
RUNS = 4  # intervals the prober runs for


def shared_config(ports: list[int]) -> str:
    servers = ", ".join(f'"{LO}:{p}"' for p in ports)
    check = f"{{type: tcp, interval: {INTERVAL}s, timeout: 200ms}}"
    return "services:\n" + "".join(
        f"  - {{name: s{i}, address: 10.9.{i // 250}.{i % 250 + 1}, port: 80, check: {check}, servers: [{servers}]}}\n"
        for i in range(SERVICES)
    )


@aio
async def test_1000_services_sharing_16_servers_send_16_probes_per_interval() -> None:
    accepted: Counter[int] = Counter()

    async def count(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[writer.get_extra_info("sockname")[1]] += 1
        writer.close()

    async with contextlib.AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(tcp_server(count)) for _ in range(SERVERS)]
        config = loads(shared_config(ports))
        wanted = targets(config.services)
        assert len(wanted) == SERVICES * SERVERS
        prober = Prober()
        prober.set_targets(wanted.values())
        assert prober.probe_count == SERVERS
        await prober.start()
        await asyncio.sleep(RUNS * INTERVAL)
        await prober.stop()
    total = sum(accepted.values())
    print(
        f"\n{SERVICES} services x {SERVERS} shared servers: {total} probes in {RUNS} intervals"
        f" ({total / RUNS:.1f} per interval; one per (service, server) would be {SERVICES * SERVERS})"
    )
    assert set(accepted) == set(ports)  # every server probed ...
    assert max(accepted.values()) <= RUNS + 1  # ... once per interval, not once per service
    assert len(prober.sharing(next(iter(wanted.values())))) == SERVICES


def test_status_names_the_services_that_share_a_probe(tmp_path: Path) -> None:
    text = "services:\n" + "".join(
        f"  - {{name: s{i:02}, address: 10.9.0.{i + 1}, port: 80, check: {{type: tcp}}, servers: [10.0.0.1, 10.0.0.2]}}\n"
        for i in range(12)
    )
    text += (
        "  - {name: other-check, address: 10.9.1.1, port: 80, check: {type: tcp, interval: 5s},"
        " servers: [10.0.0.1]}\n"
        "  - {name: other-port, address: 10.9.1.2, port: 81, check: {type: tcp}, servers: [10.0.0.1]}\n"
    )
    daemon = FakeDaemon(tmp_path, text)
    services = {s["name"]: s for s in status(daemon)["services"]}
    first = services["s00"]["servers"][0]
    assert first["probe_shared_with"] == [f"s{i:02}" for i in range(1, SHARED_SHOWN + 1)]
    assert first["probe_shared_with_count"] == 11
    assert services["s05"]["servers"][1]["probe_shared_with"][:5] == ["s00", "s01", "s02", "s03", "s04"]
    # Other check settings, or another port: a probe of its own.
    for alone in ("other-check", "other-port"):
        server = services[alone]["servers"][0]
        assert server["probe_shared_with"] == [] and server["probe_shared_with_count"] == 0
