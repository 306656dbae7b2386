"""What a reload changed: the services to re-plan and whose health targets to replace.

Pure functions of two configs. The daemon adopts a reload by its difference (untouched servers keep
their health state, a scoped pass looks only at changed services), so that the cost of a reload
follows the edit and not the number of servers.
"""

from __future__ import annotations

from mhd.config.records import Config, ServiceConfig
from mhd.model import ServiceKey

# The services a reload dropped and those it brought (changed ones appear in both).
Replaced = tuple[tuple[ServiceConfig, ...], tuple[ServiceConfig, ...]]


def replaced_services(old: Config, new: Config) -> Replaced:
    """The services of `old` that `new` does not hold as the very same object, and the new ones.

    An incremental load (`mhd.config.reload`) reuses every service it did not re-read, so this is
    the edit, found without hashing 1,000 keys; after a full load it is every service."""
    kept = {id(s) for s in old.services} & {id(s) for s in new.services}
    return tuple(s for s in old.services if id(s) not in kept), tuple(
        s for s in new.services if id(s) not in kept
    )


def reuse_unchanged(
    old: tuple[ServiceConfig, ...], new: tuple[ServiceConfig, ...]
) -> tuple[ServiceConfig, ...]:
    """`new`, with every service equal to the `old` one of its name replaced by that old object.

    Identity is what the rest of a reload goes by (`replaced_services`): a service re-read without
    a change keeps its health targets and its built kernel form, so a reload that rewrites the
    whole file to change 50 services of 1,000 costs 50 services, not 1,000."""
    by_name = {s.name: s for s in old}
    return tuple(o if (o := by_name.get(s.name)) is not None and o == s else s for s in new)


def changed_services(old: Config, new: Config, replaced: Replaced | None = None) -> set[ServiceKey]:
    """Keys of the services a reload adds, removes or changes: what a scoped pass must look at.

    `replaced` (from the incremental loader, or `replaced_services`) narrows the comparison to the
    services the edit touched; a service re-read without a change compares equal and is left out."""
    gone, came = replaced or replaced_services(old, new)
    before = {s.key: s for s in gone}
    after = {s.key: s for s in came}
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
