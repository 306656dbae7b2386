"""mhd config files for the real-kernel tests: one template, so every test writes the same YAML shape.

    config(service("dns", vip, 53, servers), reconcile_interval="1s")
    dns_config(vip, servers, weights={...})          # the common one-service case

Only the standard library (imported by the guest's pytest, where imports are slow).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

NO_API = "{listen: '', socket: ''}"  # no listener: tests that do not use the API open no port or socket
NO_CHECK = "{type: none}"


def service(
    name: str,
    address: str,
    port: int,
    servers: Iterable[str],
    *,
    protocol: str = "udp",
    check: str = NO_CHECK,
    weights: Mapping[str, int] | None = None,
    mh_port: bool = True,
    forward: str | None = None,
    min_healthy: int | str | None = None,
    adopt: bool = False,
) -> str:
    """One entry of `services:`; servers are addresses (the service's port), weight 1 unless given.
    `forward`, `min-healthy` and `adopt` are written only when given."""
    weights = weights or {}
    lines = [
        f"  - name: {name}",
        f"    address: {address}",
        f"    port: {port}",
        f"    protocol: {protocol}",
        *(["    mh-port: true"] if mh_port else []),
        *([f"    forward: {forward}"] if forward else []),
        *([f"    min-healthy: {min_healthy}"] if min_healthy is not None else []),
        *(["    adopt: true"] if adopt else []),
        f"    check: {check}",
        "    servers:",
    ]
    lines += [f"      - {{address: {s}, weight: {weights.get(s, 1)}}}" for s in servers]
    return "\n".join(lines) + "\n"


def config(
    *services: str, reconcile_interval: str | None = None, api: str | None = NO_API, extra: str = ""
) -> str:
    """A whole file: the services (from `service`), optional reconcile interval and api section."""
    head = [f"reconcile-interval: {reconcile_interval}"] if reconcile_interval else []
    if api is not None:
        head.append(f"api: {api}")
    return "\n".join([*head, "services:"]) + "\n" + "".join(services) + extra


def dns_config(
    vip: str,
    servers: Iterable[str],
    *,
    weights: Mapping[str, int] | None = None,
    check: str = NO_CHECK,
    reconcile_interval: str | None = None,
    extra: str = "",
) -> str:
    """The suite's usual file: one UDP service `dns` on vip:53 with mh-port, no API listener."""
    return config(
        service("dns", vip, 53, servers, check=check, weights=weights),
        reconcile_interval=reconcile_interval,
        extra=extra,
    )


def check_spec(
    kind: str, port: int, interval: float, timeout: float, *, rise: int = 2, fall: int = 3, path: str = ""
) -> str:
    """A `check:` mapping probing `port` (flow style, for `service(check=...)`)."""
    where = f" path: {path}," if path else ""
    return (
        f"{{type: {kind}, port: {port},{where} interval: {interval:g}s, timeout: {timeout:g}s,"
        f" rise: {rise}, fall: {fall}}}"
    )


def http_check(port: int, interval: float, timeout: float, *, rise: int = 2, fall: int = 3) -> str:
    """An HTTP check of /healthz on `port` (scripts/demo_server.py answers it)."""
    return check_spec("http", port, interval, timeout, rise=rise, fall=fall, path="/healthz")
