"""Which servers of each configured service belong in IPVS right now (pure).

Given health and operator drains, with the `min-healthy` guard: a checker-side network problem
must never black-hole a VIP, so below the guard every enabled server stays in ("panic"). The
reconcile pass (`mhd.reconcile`) turns the result into kernel operations; status and metrics read
the `Membership` it keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mhd.config.records import Config, ServiceConfig
from mhd.model import DestKey, ServiceKey
from mhd.planner import Desired

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
