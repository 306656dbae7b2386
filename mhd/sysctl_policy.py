"""`kernel.sysctl:`: which IPVS settings the director's network namespace should have (pure).

Only names under `net.ipv4.vs.` are accepted (IPVS keeps them per network namespace, and they are
what an active/active fleet depends on); each must exist in /proc/sys/net/ipv4/vs of the running
kernel, and every value is an integer. The config's map is laid over `DEFAULTS`; a name set to null
is left to the kernel. Pure validation and diff, and a thin read/write edge on /proc of the current
network namespace: set at start and on reload, and any drift found by a pass is repaired and shown.

Defaults, for directors behind ECMP without connection synchronisation, where a router may move a
flow to another director in mid-connection (a director joins, leaves, or the router rehashes):

- `sloppy_tcp: 1`: create a connection entry from any TCP packet, not only a SYN. The director a
  flow moves to has no entry for it; without this it drops the flow's packets and the connection
  breaks. With identical Maglev tables (what mhd maintains) the new entry picks the same server.
- `sloppy_sctp: 1`: the same for SCTP packets other than INIT (the name exists when the kernel
  has IPVS SCTP support; a default the kernel lacks is skipped, a configured one is an error).
- `expire_nodest_conn: 1`: when a server is removed (health), expire its connection entries on the
  next packet instead of silently dropping packets until the entry times out; the packet after is
  scheduled again by the table, to the server every director picks.
- `expire_quiescent_template: 1`: expire persistence templates pointing at a quiescent (weight 0)
  server, so persistent services also move off a server that was taken out.
- `conntrack: 0`: do not keep netfilter conntrack entries for IPVS connections (the kernel's
  default, stated so it is enforced): a flow that arrives mid-connection is `INVALID` to conntrack
  on the director it moved to, and a stateful rule would drop it; the entries also double the
  per-connection state. Set it to 1 only when NAT/firewall rules on the director need conntrack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mhd.config.fields import did_you_mean

PREFIX = "net.ipv4.vs."

DEFAULTS: dict[str, int] = {
    "sloppy_tcp": 1,
    "sloppy_sctp": 1,
    "expire_nodest_conn": 1,
    "expire_quiescent_template": 1,
    "conntrack": 0,
}


@dataclass(frozen=True)
class Change:
    """One setting that differs: `current` None when it could not be read."""

    name: str  # short name, e.g. "sloppy_tcp"
    current: int | None
    desired: int

    @property
    def key(self) -> str:
        return PREFIX + self.name

    def describe(self) -> str:
        return f"{self.key}: {self.current if self.current is not None else '?'} -> {self.desired}"


def short_name(name: str) -> str | None:
    """`sloppy_tcp` for `net.ipv4.vs.sloppy_tcp` (or `net/ipv4/vs/sloppy_tcp`); None when the name is
    not under net.ipv4.vs."""
    dotted = name.strip().replace("/", ".")
    if not dotted.startswith(PREFIX):
        return None
    rest = dotted[len(PREFIX) :]
    return rest if rest and "." not in rest else None


def validate(
    config: Mapping[str, object], available: Iterable[str] | None = None
) -> tuple[dict[str, int | None], list[tuple[str, str]]]:
    """Check a `kernel.sysctl:` map; returns the settings by short name (None: leave to the kernel)
    and the problems as (name, message with the fix). `available`: the names the running kernel has
    (None: not checked, as on a host without IPVS)."""
    names = set(available) if available is not None else None
    out: dict[str, int | None] = {}
    problems: list[tuple[str, str]] = []
    for name, value in config.items():
        short = short_name(str(name))
        if short is None:
            problems.append(
                (str(name), f"{name} is not an IPVS setting: only names under {PREFIX} are managed")
            )
            continue
        if names is not None and short not in names:
            hint = did_you_mean(short, sorted(names))
            also = f"; did you mean {PREFIX}{hint[0]}?" if hint else ""
            problems.append((str(name), f"{PREFIX}{short} does not exist on this kernel{also}"))
            continue
        if value is None:
            out[short] = None
        elif isinstance(value, bool) or not isinstance(value, int):
            problems.append((str(name), f"{PREFIX}{short} must be an integer, not {value!r}"))
        else:
            out[short] = value
    return out, problems


def effective(settings: Mapping[str, int | None], available: Iterable[str] | None = None) -> dict[str, int]:
    """`DEFAULTS` overlaid with the config's settings; a default the kernel lacks is skipped."""
    names = set(available) if available is not None else None
    merged: dict[str, int | None] = {**DEFAULTS, **settings}
    return {
        k: v
        for k, v in sorted(merged.items())
        if v is not None and (names is None or k in names or k in settings)
    }


def diff(desired: Mapping[str, int], current: Mapping[str, int | None]) -> list[Change]:
    """The settings to write: those whose current value differs (or could not be read)."""
    return [Change(k, current.get(k), v) for k, v in sorted(desired.items()) if current.get(k) != v]
