"""One reconcile pass: observe the kernel, decide what should be there, diff, act.

`reconcile` is the thin shell around the pure parts: a fresh dump, what should be there
(`mhd.membership.desired_state`), the planner, the writes, and the ownership records around them.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mhd.config.records import Config
from mhd.membership import HealthView, Membership, all_healthy, desired_state
from mhd.model import Service, ServiceKey
from mhd.planner import Op, apply_ops, claims, plan, unmanaged
from mhd.state import StateDir

if TYPE_CHECKING:  # the IPVS client pulls in pyroute2; this module only passes it through
    from mhd.ipvs import IpvsClient, OpFailure

log = logging.getLogger("mhd.reconcile")


@dataclass
class Outcome:
    """What one reconcile pass saw and did."""

    observed: dict[ServiceKey, Service]
    ops: list[Op]
    failures: list[OpFailure]
    unmanaged: list[ServiceKey]
    members: dict[str, Membership] = field(default_factory=dict)
    # The kernel after the writes: `observed` with the ops applied by the kernel's own list rules
    # (`observed` itself stays the state the ops were planned on: `mhctl apply` counts moved flows
    # against it). After a failed op it is `observed`: the next whole pass reads the truth.
    after: dict[ServiceKey, Service] = field(default_factory=dict)
    # Configured services the kernel held without mhd owning them: left alone, or taken over
    # because they say `adopt: true` (planner.claims).
    refused: list[ServiceKey] = field(default_factory=list)
    adopted: list[ServiceKey] = field(default_factory=list)

    @property
    def applied(self) -> int:
        return len(self.ops) - len(self.failures)


async def reconcile(
    client: IpvsClient,
    config: Config,
    state: StateDir,
    healthy: HealthView = all_healthy,
    *,
    dry_run: bool = False,
    only: set[ServiceKey] | None = None,
) -> Outcome:
    """Make IPVS match the config (and health) now; return what was seen and done.

    `only` scopes the pass to some services (a reload that changed one, a health transition): they
    are read fresh from the kernel one by one, so the cost follows the change, not the table size.
    The periodic pass is always whole and catches drift everywhere else.

    Ownership is recorded *before* writing, so a crash half-way still knows which services are mhd's;
    services deleted because they left the config are forgotten only after the kernel confirmed,
    and one whose creation found another's already there (EEXIST) is not recorded.
    A configured service the kernel already holds and mhd does not own is refused (`claims`).
    """
    desired, members = desired_state(config, healthy, state.disabled(), only)
    all_owned = owned = state.owned()
    if only is None:
        observed = await client.services()
    else:
        observed = {}
        for key in only:
            svc = await client.service(key)
            if svc is not None:
                observed[key] = svc
        owned = owned & only
    ops = plan(desired, observed, owned)
    foreign = unmanaged(desired, observed, owned)
    claim = claims(desired, observed, owned)
    if dry_run:
        return Outcome(observed, ops, [], foreign, members, observed, *claim)
    mine = all_owned | (set(desired) - set(claim.refused))
    state.set_owned(mine)
    for key in claim.adopted:
        log.warning("service %s %s: adopted (adopt: true): mhd manages it from now on", desired[key].name, key,
                    extra={"MHD_SERVICE": desired[key].name})  # fmt: skip
    failures = await client.apply(ops) if ops else []
    failed = {f.op.service.key for f in failures if f.op.kind == "delete-service"}
    gone = {op.service.key for op in ops if op.kind == "delete-service"} - failed
    gone |= (owned - set(desired)) - set(observed)
    # EEXIST on a creation: a service appeared after the dump; unless it was mhd's, it is not now.
    gone |= {
        f.op.service.key for f in failures if f.op.kind == "add-service" and f.error.code == errno.EEXIST
    } - all_owned
    state.set_owned(mine - gone)
    log_ops(ops)
    for failure in failures:
        log.error("%s", failure)
    after = apply_ops(observed, ops) if ops and not failures else observed
    return Outcome(observed, ops, failures, foreign, members, after, *claim)


def refusal(name: str, key: ServiceKey) -> str:
    """Why a configured service is left alone, and what the operator can do: said by the daemon's
    log, `mhctl plan` and `mhctl apply` alike."""
    return (
        f"service {name} {key}: IPVS already holds it and mhd does not own it (another tool's or "
        "hand-made): left alone; set adopt: true on it to take it over, or remove it from IPVS or from the config"
    )


def log_refusals(
    before: set[ServiceKey], outcome: Outcome, config: Config, only: set[ServiceKey] | None
) -> set[ServiceKey]:
    """Log a refused service once when it starts being refused and once when that ends (a pass
    every reconcile-interval would otherwise repeat it); return the keys refused now."""
    seen = before if only is None else before & only
    now = set(outcome.refused)
    for key in sorted(now - seen, key=ServiceKey.sort_key):
        svc = config.by_key.get(key)
        name = svc.name if svc else "-"
        log.warning("%s", refusal(name, key), extra={"MHD_SERVICE": name})
    for key in sorted(seen - now, key=ServiceKey.sort_key):
        log.info("service %s is no longer refused (adopted, gone from IPVS, or from the config)", key)
    return (before - seen) | now


def log_ops(ops: list[Op], limit: int = 50) -> None:
    """Every operation when there are few; a count by kind when a cold start writes thousands."""
    if len(ops) <= limit:
        for op in ops:
            log.info("%s", op.describe())
        return
    counts: dict[str, int] = {}
    debug = log.isEnabledFor(logging.DEBUG)  # describing 17,000 operations costs more than sending them
    for op in ops:
        counts[op.kind] = counts.get(op.kind, 0) + 1
        if debug:
            log.debug("%s", op.describe())
    log.info("%d operations: %s", len(ops), ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
