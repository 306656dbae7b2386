"""The REST API and the Prometheus endpoint, served by aiohttp inside the daemon's loop.

Two listeners, one per trust level, each its own `web.Application` so a handler never has to guess
where a request came from:

- the unix socket (`api.socket`, default /run/mhd/mhd.sock): access is the socket file's mode and
  group, so every request is allowed, the mutating ones (POST) included; this is what mhctl uses;
- TCP (`api.listen`, default 127.0.0.1:9180): reads for everyone (status, /metrics for Prometheus);
  a POST needs a bearer token (`mhd.api.auth`).

`start` wires the parts: the routes (`handlers`), who may change things (`auth`), the sockets and
how many connections are served at once (`listeners`), the metrics, and the Maglev model (`model`),
imported here, at start, before the prober runs. The API reads the daemon only through
`mhd.api.view.DaemonView`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from mhd.api import model
from mhd.api.auth import TokenFile, check_socket_mode
from mhd.api.handlers import Api, StatusBodies
from mhd.api.listeners import MAX_REQUEST_LINE, Admission, Listener, tcp_listeners, unix_listener
from mhd.api.metrics import Metrics
from mhd.api.view import DaemonView
from mhd.config.validate import parse_listen

# seconds a stop waits for requests in flight (aiohttp's default is 60, past systemd's stop timeout):
# every request but a `drain --wait` answers in well under a second.
SHUTDOWN_TIMEOUT = 3.0

log = logging.getLogger("mhd.api")

# Connections served at once (see `listeners.Admission`), and the share of them TCP clients may hold.
MAX_CONNECTIONS, TCP_CONNECTIONS = 16, 12
Closer = Callable[[], Awaitable[None]]


async def start(daemon: DaemonView) -> Closer:
    """Serve the API on the configured TCP address and unix socket; returns the closer.

    A listener that cannot be opened is logged and skipped: the daemon's job is IPVS and health, and
    an occupied port must not stop it from doing that job.
    """
    assert daemon.config is not None
    api = daemon.config.api
    metrics = Metrics(daemon)
    metrics.install()
    bodies = StatusBodies(daemon)
    tokens = TokenFile()
    admission = Admission(MAX_CONNECTIONS)
    runners: list[web.AppRunner] = []
    listeners: list[Listener] = []
    socket_path: Path | None = None
    if api.listen:
        host, port = parse_listen(api.listen)
        runner = await _serve(Api(daemon, metrics, trusted=False, bodies=bodies, tokens=tokens).app())
        try:
            socks = tcp_listeners(host, port)
        except OSError as exc:
            log.error("API: cannot listen on %s (api.listen): %s", api.listen, exc.strerror or exc)
            await runner.cleanup()
        else:
            listeners += [Listener(s, runner, admission, TCP_CONNECTIONS) for s in socks]
            log.info("API listening on http://%s (reads; POST needs a token)", api.listen)
            runners.append(runner)
            if api.token_file:
                tokens.check(api.token_file)
    if api.socket:
        runner = await _serve(Api(daemon, metrics, trusted=True, bodies=bodies).app())
        try:
            sock = unix_listener(api.socket, api.socket_mode, api.socket_group)
        except (OSError, LookupError) as exc:  # LookupError: unknown socket-group
            log.error("API: cannot serve on %s (api.socket): %s", api.socket, exc)
            await runner.cleanup()
        else:
            listeners.append(Listener(sock, runner, admission, MAX_CONNECTIONS))
            socket_path = Path(api.socket)
            log.info("API listening on %s (mode %o)", api.socket, api.socket_mode)
            check_socket_mode(api.socket, api.socket_mode)
            runners.append(runner)
    model.load()  # bound but not yet accepting: clients queue in the backlog meanwhile
    for listener in listeners:
        listener.start()

    async def close() -> None:
        metrics.uninstall()
        for listener in listeners:
            listener.close()
        for runner in runners:
            await runner.cleanup()
        if socket_path is not None:
            with contextlib.suppress(OSError):
                socket_path.unlink()

    return close


async def _serve(app: web.Application) -> web.AppRunner:
    # No access log: Prometheus scrapes would flood it.
    runner = web.AppRunner(
        app, access_log=None, max_line_size=MAX_REQUEST_LINE, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    return runner
