"""The running kernel: load the IPVS modules, read the MH table size, tell in-tree from backport.

All of it reads /proc, /sys and /boot, or runs modprobe: nothing here talks netlink.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mhd.model import DEFAULT_MH_TAB_INDEX, mh_table_size

SYS_MODULE = Path("/sys/module")
MhVariant = Literal["intree", "backport"]


class KernelError(Exception):
    """IPVS cannot be used on this host; the message says what to install or load."""


class IpvsUnavailable(KernelError):
    """The kernel has no IPVS generic netlink family: the module is missing or not loaded."""


@dataclass(frozen=True)
class KernelInfo:
    release: str
    mh_loaded: bool
    mh_variant: MhVariant | None
    mh_tab_index: int
    mh_tab_index_source: str

    @property
    def mh_table_size(self) -> int:
        return mh_table_size(self.mh_tab_index)

    def to_json(self) -> dict[str, object]:
        return {
            "release": self.release,
            "ip_vs_mh_loaded": self.mh_loaded,
            "ip_vs_mh": self.mh_variant,
            "mh_tab_index": self.mh_tab_index,
            "mh_table_size": self.mh_table_size,
            "mh_tab_index_source": self.mh_tab_index_source,
        }


def load_modules(schedulers: Iterable[str]) -> list[str]:
    """modprobe ip_vs and ip_vs_<scheduler> for every scheduler in use.

    Returns warnings for schedulers that could not be loaded (the services using them will fail with
    a clear error); raises KernelError when IPVS itself is missing.
    """
    warnings: list[str] = []
    if not _ipvs_present():
        error = _modprobe("ip_vs")
        if not _ipvs_present():
            raise KernelError(
                "IPVS is not available in this kernel"
                + (f" (modprobe ip_vs: {error})" if error else "")
                + ": load it with `modprobe ip_vs`; on Debian the module ships with linux-image-amd64 "
                "(a custom kernel needs CONFIG_IP_VS=m)"
            )
    for sched in sorted(set(schedulers)):
        if (SYS_MODULE / f"ip_vs_{sched}").exists():
            continue
        error = _modprobe(f"ip_vs_{sched}")
        if error and not (SYS_MODULE / f"ip_vs_{sched}").exists():
            hint = " (Linux 4.18+, or the ip-vs-mh-dkms backport)" if sched == "mh" else ""
            warnings.append(f"scheduler {sched}: cannot load ip_vs_{sched}{hint}: {error}")
    return warnings


def _ipvs_present() -> bool:
    return Path("/proc/net/ip_vs").exists() or (SYS_MODULE / "ip_vs").exists()


def _modprobe(module: str) -> str:
    """Run modprobe; '' on success, the reason otherwise."""
    import shutil  # imported where used: shutil pulls in bz2 and lzma, which mhctl never needs

    binary = shutil.which("modprobe") or "/sbin/modprobe"
    try:
        proc = subprocess.run([binary, module], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def mh_tab_index(release: str | None = None) -> tuple[int, str]:
    """CONFIG_IP_VS_MH_TAB_INDEX of the running kernel and where it was read (default 12)."""
    release = release or os.uname().release
    pattern = re.compile(rb"^CONFIG_IP_VS_MH_TAB_INDEX=(\d+)$", re.M)
    for path in (Path(f"/boot/config-{release}"), Path("/proc/config.gz")):
        try:
            data = _read_config(path)
        except (OSError, EOFError):  # gzip.BadGzipFile is an OSError
            continue
        m = pattern.search(data)
        if m and 8 <= int(m.group(1)) <= 17:
            return int(m.group(1)), str(path)
    return DEFAULT_MH_TAB_INDEX, "default"


def _read_config(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    import gzip  # only for kernels without /boot/config-*: not on every start-up

    return gzip.decompress(path.read_bytes())


def mh_variant() -> MhVariant | None:
    """Which ip_vs_mh is loaded: the backport has a version file and `variant` parameter."""
    base = SYS_MODULE / "ip_vs_mh"
    if not base.exists():
        return None
    try:
        if (base / "parameters" / "variant").read_text().strip() == "backport":
            return "backport"
    except OSError:
        pass
    return "backport" if (base / "version").exists() else "intree"


def info(tab_index_override: int | None = None) -> KernelInfo:
    release = os.uname().release
    index, source = (tab_index_override, "config") if tab_index_override else mh_tab_index(release)
    variant = mh_variant()
    return KernelInfo(release, variant is not None, variant, index, source)
