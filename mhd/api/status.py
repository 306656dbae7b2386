"""Status documents: what `GET /v1/status` and `mhctl status` show, built from the daemon's view.

Kept apart from the HTTP layer so that the same plain-JSON documents can be built in tests (and by any
future consumer) from a daemon whose state was filled in by hand, with no server and no kernel.

A service's `state` is `mhd.membership.service_state`, the one rule the metrics and the
announcement policy use too.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mhd import __version__
from mhd.api.fleet import fleet_status, table_digest
from mhd.membership import service_state
from mhd.model import (
    MH_FALLBACK,
    MH_PORT,
    PROTOCOL_NAMES,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED3,
    Dest,
    Stats,
    family_name,
)

if TYPE_CHECKING:
    from mhd.api.view import DaemonView
    from mhd.config.records import ServerConfig, ServiceConfig



def flag_names(scheduler: str, flags: int) -> list[str]:
    """The ipvsadm names of a service's flags; flag-1/flag-2 are named by the scheduler using them."""
    names: list[str] = []
    if flags & SVC_F_PERSISTENT:
        names.append("persistent")
    if flags & SVC_F_ONEPACKET:
        names.append("onepacket")
    prefix = scheduler if scheduler in ("mh", "sh") else ""
    if flags & MH_FALLBACK:
        names.append(f"{prefix}-fallback" if prefix else "flag-1")
    if flags & MH_PORT:
        names.append(f"{prefix}-port" if prefix else "flag-2")
    if flags & SVC_F_SCHED3:
        names.append("flag-3")
    return names


STATS_FIELDS = Stats._fields


def stats_json(stats: Stats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in STATS_FIELDS}  # asdict() is 10x slower


def daemon_status(daemon: DaemonView) -> dict[str, Any]:
    """The daemon's own part: version, config, last reload, kernel, counters."""
    config = daemon.config
    return {
        "version": __version__,
        "pid": os.getpid(),
        "config": {
            "path": daemon.config_path,
            "sha256": config.sha256 if config else None,
            "loaded_at": daemon.loaded_at or None,
        },
        "last_reload": daemon.last_reload.to_json() if daemon.last_reload else None,
        "kernel": daemon.kernel.to_json() if daemon.kernel else None,
        "reconciles": daemon.reconciles,
        "transitions": daemon.transitions,
        "summary": daemon.status_line(),
    }


def status(daemon: DaemonView) -> dict[str, Any]:
    """The whole `GET /v1/status` document."""
    disabled = daemon.state.disabled() if daemon.state is not None else {}
    services = daemon.config.services if daemon.config is not None else ()
    return {
        "daemon": daemon_status(daemon),
        "services": [service_status(daemon, svc, disabled.get(svc.name, set())) for svc in services],
        "fleet": fleet_status(daemon),
    }


def find_service(daemon: DaemonView, name: str) -> dict[str, Any] | None:
    """One service's document (`GET /v1/services/{name}`), or None when it is not configured."""
    svc = daemon.config.by_name(name) if daemon.config is not None else None
    if svc is None:
        return None
    disabled = daemon.state.disabled().get(name, set()) if daemon.state is not None else set()
    return service_status(daemon, svc, disabled)


def service_status(daemon: DaemonView, svc: ServiceConfig, disabled: set[str]) -> dict[str, Any]:
    observed = daemon.observed.get(svc.key)
    in_kernel = {d.key: d for d in observed.dests} if observed is not None else {}
    panic = in_panic(daemon, svc.name)
    servers = [server_status(daemon, svc, s, in_kernel.get(s.key), disabled) for s in svc.servers]
    key = svc.key
    return {
        "name": svc.name,
        "virtual": str(key),
        "address": str(key.address) if key.address is not None else None,
        "port": key.port,
        "fwmark": key.fwmark,
        "family": family_name(key.family),
        "protocol": PROTOCOL_NAMES.get(key.protocol) if not key.fwmark else None,
        "scheduler": svc.scheduler,
        "flags": flag_names(svc.scheduler, svc.flags),
        "state": service_state(
            bool(in_kernel), panic, ((s["health"] == "up", s["in_kernel"], s["disabled"]) for s in servers)
        ),
        "panic": panic,
        "min_healthy": str(svc.min_healthy),
        "in_kernel": observed is not None,
        "servers_total": len(servers),
        "servers_up": sum(1 for s in servers if s["health"] == "up"),
        "servers_in_kernel": sum(1 for s in servers if s["in_kernel"]),
        "stats": stats_json(observed.stats) if observed is not None else None,
        "table_digest": table_digest(daemon, svc.name),
        "servers": servers,
    }


def in_panic(daemon: DaemonView, service: str) -> bool:
    """Whether the last pass kept unhealthy servers of `service` in IPVS (the min-healthy guard)."""
    membership = daemon.outcome.members.get(service) if daemon.outcome is not None else None
    return bool(membership and membership.panic)


def server_status(
    daemon: DaemonView, svc: ServiceConfig, server: ServerConfig, dest: Dest | None, disabled: set[str]
) -> dict[str, Any]:
    key = server.key
    health = daemon.health(svc.name, key)
    last = health.last if health is not None else None
    name = str(key)
    return {
        "name": name,
        "address": str(server.address),
        "port": server.port,
        "weight": server.weight,
        "check": server.check.type,
        "health": health.state if health is not None else "unknown",
        "in_kernel": dest is not None,
        "disabled": name in disabled,
        "last_check": (
            {"at": last.at, "ok": last.ok, "latency": last.latency, "detail": last.detail} if last else None
        ),
        "successes": health.successes if health is not None else 0,
        "failures": health.failures if health is not None else 0,
        "transitions": health.transitions if health is not None else 0,
        "kernel_weight": dest.weight if dest is not None else None,
        "stats": stats_json(dest.stats) if dest is not None else None,
    }
