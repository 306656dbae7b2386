"""The /proc edge of `kernel.sysctl:`: read and write the IPVS settings of the current network namespace.

What to set, and why those defaults, is `mhd.sysctl_policy` (pure, shared with the config validator);
this module reads /proc/sys/net/ipv4/vs, diffs and writes. The daemon sets them at start and on
reload, and every pass repairs drift and shows it in status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from mhd.sysctl_policy import DEFAULTS, PREFIX, Change, diff, effective, short_name, validate

PROC = Path("/proc/sys/net/ipv4/vs")


def available(root: Path = PROC) -> set[str]:
    """The IPVS settings this kernel has (empty when IPVS is not loaded)."""
    try:
        return {p.name for p in root.iterdir() if p.is_file()}
    except OSError:
        return set()


def read(names: Iterable[str], root: Path = PROC) -> dict[str, int | None]:
    """Current values; None for a setting that cannot be read or is not one integer."""
    out: dict[str, int | None] = {}
    for name in names:
        try:
            out[name] = int((root / name).read_text().strip())
        except (OSError, ValueError):
            out[name] = None
    return out


def write(changes: Iterable[Change], root: Path = PROC) -> list[tuple[Change, str]]:
    """Write each change; the failed ones with the reason (the others are still written)."""
    failures = []
    for change in changes:
        try:
            with open(root / change.name, "w") as f:
                f.write(f"{change.desired}\n")
        except OSError as exc:
            failures.append((change, exc.strerror or str(exc)))
    return failures


def sync(
    desired: Mapping[str, int], root: Path = PROC, *, dry_run: bool = False
) -> tuple[list[Change], list[tuple[Change, str]]]:
    """One pass: read, diff, write. Returns the drift found and the writes that failed."""
    changes = diff(desired, read(desired, root))
    return changes, ([] if dry_run else write(changes, root))


__all__ = [
    "DEFAULTS",
    "PREFIX",
    "Change",
    "available",
    "diff",
    "effective",
    "read",
    "short_name",
    "sync",
    "validate",
    "write",
]
