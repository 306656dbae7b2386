"""The validated form of a `check:` block.

One flat, frozen record for every check type: the config layer fills it (with file:line errors for
bad values), the prober and the checkers only read it. Frozen and hashable so that a server shared by
several services with the *same* check definition can be probed once (the prober dedups on
`(spec, address, port)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

CheckType = Literal["none", "tcp", "http", "https", "udp", "dns", "exec"]
CHECK_TYPES: tuple[str, ...] = ("none", "tcp", "http", "https", "udp", "dns", "exec")


def astuple_shallow(record: object) -> tuple[object, ...]:
    """The field values of a dataclass, not copied (unlike dataclasses.astuple)."""
    return tuple(getattr(record, f.name) for f in fields(record))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CheckSpec:
    """How to decide whether one real server is healthy."""

    type: CheckType = "none"
    interval: float = 2.0  # seconds between two probes of one server
    timeout: float = 1.0  # seconds; always < interval
    rise: int = 2  # consecutive successes to go up
    fall: int = 3  # consecutive failures to go down
    port: int | None = None  # probe this port instead of the server's
    source_address: str | None = None  # bind probes to this local address
    initial_state: Literal["up", "down"] | None = None  # overrides the start-up rule
    fast_interval: float | None = None  # while a streak runs against the state; None: interval
    down_interval: float | None = None  # while down and not recovering; None: interval

    # http / https
    method: Literal["GET", "HEAD"] = "GET"
    path: str = "/"
    host: str | None = None  # Host header; default: the server address
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)  # inclusive ranges
    body_regex: str | None = None
    tls_verify: bool = True
    sni: str | None = None
    client_cert: str | None = None  # PEM file
    client_key: str | None = None  # PEM file; default: inside client_cert

    # udp
    payload: bytes = b""
    expect_regex: bytes | None = None  # a reply must match this (bytes regex); None: any reply

    # dns
    query_name: str = "."
    query_type: str = "A"
    expect_rcode: str = "NOERROR"

    # exec
    command: tuple[str, ...] = field(default=())  # argv; run without a shell

    def __hash__(self) -> int:
        """Hashed once: every health lookup hashes a target, and with it this 22-field record."""
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(astuple_shallow(self))
            object.__setattr__(self, "_hash", cached)
        return cached

    def probe_port(self, server_port: int) -> int:
        """The port a probe connects to: the check's own, or the server's."""
        return self.port if self.port is not None else server_port


NO_CHECK = CheckSpec()
