"""Which servers of each configured service belong in IPVS right now (pure).

Given health and operator drains, with the `min-healthy` guard: a checker-side network problem
must never black-hole a VIP, so below the guard every enabled server stays in ("panic"). The
reconcile pass (`mhd.reconcile`) turns the result into kernel operations; status and metrics read
the `Membership` it keeps.

A service's summary `state` (`service_state`) says what the operator must look at first, most
severe first; status, metrics and the announcement policy (`mhd.announce`) all use it:

- `down`: none of its servers is in the kernel (the VIP black-holes its traffic);
- `panic`: the min-healthy guard fired, so unhealthy servers are kept in IPVS on purpose;
- `degraded`: some enabled server is not up, or not in the kernel yet;
- `ok`: every enabled server is up and in the kernel (operator-disabled servers do not count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from mhd.config.records import Config, ServiceConfig
from mhd.model import DestKey, ServiceKey
from mhd.planner import Desired

ServiceState = Literal["ok", "degraded", "panic", "down"]
SERVICE_STATES: tuple[str, ...] = ("ok", "degraded", "panic", "down")
# Is this server healthy? (service name, server key) -> bool. `mhctl apply` says yes to every one.
HealthView = Callable[[str, DestKey], bool]


def all_healthy(_service: str, _server: DestKey) -> bool:
    return True


@dataclass(frozen=True)
class Membership:
    """Which servers of one service belong in IPVS, and whether the min-healthy guard fired."""

    members: frozenset[DestKey]
    panic: bool
    healthy: int
    enabled: int


def membership(svc: ServiceConfig, healthy: HealthView, disabled: set[str]) -> Membership:
    """Healthy, enabled servers; all enabled ones when fewer than `min-healthy` are healthy (panic).

    Operator-disabled servers stay out even in panic: a drain is an explicit decision.
    """
    enabled = [s for s in svc.servers if str(s.key) not in disabled] if disabled else list(svc.servers)
    up = frozenset(s.key for s in enabled if healthy(svc.name, s.key))
    need = svc.min_healthy.required(len(enabled))
    if len(up) < need:
        return Membership(frozenset(s.key for s in enabled), True, len(up), len(enabled))
    return Membership(up, False, len(up), len(enabled))


def desired_state(
    config: Config,
    healthy: HealthView,
    disabled: Mapping[str, set[str]],
    only: set[ServiceKey] | None = None,
) -> tuple[dict[ServiceKey, Desired], dict[str, Membership]]:
    """What IPVS should hold for every configured service, or for the `only` ones."""
    desired: dict[ServiceKey, Desired] = {}
    members: dict[str, Membership] = {}
    services = config.services if only is None else [config.by_key[k] for k in only if k in config.by_key]
    for svc in services:
        m = membership(svc, healthy, disabled.get(svc.name, set()))
        members[svc.name] = m
        desired[svc.key] = Desired(svc.name, svc.service(set(m.members)), svc.adopt)
    return desired, members


def service_state(
    any_in_kernel: bool, panic: bool, servers: Iterable[tuple[bool, bool, bool]]
) -> ServiceState:
    """The summary state (see the module docstring).

    `servers` holds (up, in the kernel, disabled by an operator) for each configured server.
    """
    if not any_in_kernel:
        return "down"
    if panic:
        return "panic"
    return "ok" if all(off or (up and present) for up, present, off in servers) else "degraded"
