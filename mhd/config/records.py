"""What a config is, once validated: immutable records that the daemon, the planner, the API and
`mhctl` read, and nothing writes.

`mhd.config.validate` builds them from a file, with every problem placed at its file:line; here is
only their shape and the small queries every reader needs (a service's kernel form, lookups by name
and key), so that a reader of the records does not depend on how a file is checked.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

from mhd import DEFAULT_SOCKET
from mhd.config.checkspec import CheckSpec
from mhd.model import Dest, DestKey, IPAddress, Service, ServiceKey

DEFAULT_STATE_DIR = "/var/lib/mhd"
DEFAULT_LISTEN = "127.0.0.1:9180"

# What a failed server becomes: removed from IPVS (the default, the same on every kernel), or kept
# at weight 0 with the service's mh-fallback flag so the Maglev table stays as it is (in-tree
# ip_vs_mh only; `mhd.membership`).
OnFailure = Literal["remove", "quiesce"]
QUIESCE_ON_BACKPORT = (
    "on-failure: quiesce needs the in-tree ip_vs_mh (Linux >= 4.18), and this is the backport:"
    " it ignores weight-0 servers and has no mh-fallback, so a quiesced server's flows would"
    " get no server. Use on-failure: remove, or the in-tree module"
)


@dataclass(frozen=True)
class MinHealthy:
    """How many servers must stay in IPVS before health removals stop (panic)."""

    count: int = 1
    percent: float | None = None

    def required(self, configured: int) -> int:
        if self.percent is not None:
            import math

            return max(1, math.ceil(configured * self.percent / 100.0)) if configured else 0
        return min(self.count, configured)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class ServerConfig:
    """One real server of a service, with its check merged over the service's and the defaults'."""

    address: IPAddress
    port: int
    weight: int
    forward: int
    check: CheckSpec

    @cached_property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)

    def dest(self) -> Dest:
        return self._dest

    @cached_property
    def _dest(self) -> Dest:
        # Once per config object, not once per pass: a periodic pass at 100,000 servers built
        # 100,000 identical records every time.
        return Dest(self.key, self.weight, self.forward)


@dataclass(frozen=True)
class ServiceConfig:
    """One virtual service as configured: its identity, scheduling, servers and health policy."""

    name: str
    key: ServiceKey
    scheduler: str
    flags: int
    servers: tuple[ServerConfig, ...]
    check: CheckSpec
    min_healthy: MinHealthy = MinHealthy()
    adopt: bool = False  # take over a service already in IPVS that mhd does not own (README)
    on_failure: OnFailure = "remove"
    announce: tuple[IPAddress, ...] = ()  # fwmark services: the VIPs to announce (`announce:`)

    def service(
        self, members: set[DestKey] | None = None, quiesced: frozenset[DestKey] = frozenset()
    ) -> Service:
        """The kernel service with `members` (default: every configured server) as destinations,
        and the `quiesced` servers at weight 0."""
        if members is not None and len(members) == len(self.servers) and not quiesced:
            members = None  # members are servers of this service: all of them, no lookups needed
        if members is None and not quiesced:
            return self._whole
        return self._build(members, quiesced)

    @cached_property
    def _whole(self) -> Service:
        """Every server in: the desired service of nearly every pass, built once per config object."""
        return self._build(None, frozenset())

    def _build(self, members: set[DestKey] | None, quiesced: frozenset[DestKey]) -> Service:
        dests = tuple(
            replace(s.dest(), weight=0) if s.key in quiesced else s.dest()
            for s in self.servers
            if members is None or s.key in members or s.key in quiesced
        )
        netmask = 128 if self.key.family == socket.AF_INET6 else 0xFFFFFFFF
        return Service(self.key, self.scheduler, self.flags, 0, netmask, dests)

    def server(self, text: str) -> ServerConfig | None:
        """Find a server by `addr`, `addr:port` or `[v6]:port` as an operator would type it."""
        for s in self.servers:
            if text in (str(s.key), str(s.address), f"{s.address}:{s.port}"):
                return s
        return None


@dataclass(frozen=True)
class ApiConfig:
    """Where the REST API listens and who may use it."""

    listen: str | None = DEFAULT_LISTEN  # host:port, or None to disable TCP
    socket: str | None = DEFAULT_SOCKET
    socket_mode: int = 0o660
    socket_group: str | None = None
    token_file: str | None = None


@dataclass(frozen=True)
class KernelConfig:
    """What to assume about the kernel's ip_vs_mh when detection is not wanted."""

    module: str = "auto"  # auto | intree | backport
    mh_tab_index: int | None = None  # override detection of CONFIG_IP_VS_MH_TAB_INDEX
    # `kernel.sysctl:` as written, short names (sloppy_tcp) -> value, None: left to the kernel.
    # Laid over `mhd.sysctl_policy.DEFAULTS`; a tuple of pairs so the record stays hashable.
    sysctl: tuple[tuple[str, int | None], ...] = ()


@dataclass(frozen=True)
class AnnounceConfig:
    """`announce:`: the routing table and route protocol of mhd's announcements, and their policy
    (`mhd.announce.Options`)."""

    table: int
    protocol: int
    vip_interface: str | None = None
    hold_down: float = 30.0
    announce_panic: bool = True


@dataclass(frozen=True)
class Config:
    """A whole validated file; `sha256` identifies the bytes it was read from (status, reloads)."""

    path: str
    sha256: str
    services: tuple[ServiceConfig, ...]
    reconcile_interval: float = 10.0
    state_dir: str = DEFAULT_STATE_DIR
    api: ApiConfig = ApiConfig()
    kernel: KernelConfig = KernelConfig()
    announce: AnnounceConfig | None = None  # None: this director announces nothing

    def by_name(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.name == name), None)

    @cached_property
    def server_count(self) -> int:
        return sum(len(s.servers) for s in self.services)

    @cached_property
    def by_key(self) -> dict[ServiceKey, ServiceConfig]:
        return {s.key: s for s in self.services}

    def edited(
        self,
        services: tuple[ServiceConfig, ...],
        sha256: str,
        dropped: tuple[ServiceConfig, ...],
        added: tuple[ServiceConfig, ...],
    ) -> Config:
        """This config with `services`, in which `added` replaced `dropped`: the derived indexes are
        carried over and patched (a dict copy keeps its hashes) instead of rebuilt from every service."""
        new = replace(self, services=services, sha256=sha256)
        if "by_key" in self.__dict__:
            index = dict(self.by_key)
            for svc in dropped:
                del index[svc.key]
            index.update((svc.key, svc) for svc in added)
            new.__dict__["by_key"] = index
        if "server_count" in self.__dict__:
            change = sum(len(s.servers) for s in added) - sum(len(s.servers) for s in dropped)
            new.__dict__["server_count"] = self.server_count + change
        return new

    def schedulers(self) -> set[str]:
        return {s.scheduler for s in self.services}
