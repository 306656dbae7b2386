"""The vocabulary shared by the config, the planner and the IPVS layer.

Everything here is an immutable value: a virtual service and its destinations as the kernel sees them
(`Service`, `Dest`), keyed the way the kernel keys them (`ServiceKey`, `DestKey`). The planner compares
desired and observed values of these types, so they carry exactly the fields mhd manages; kernel
counters ride along in `Stats`, which never takes part in a comparison.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS: dict[str, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOLS.items()}

# IP_VS_CONN_F_* forwarding methods (include/uapi/linux/ip_vs.h).
FORWARD_METHODS: dict[str, int] = {"nat": 0, "tunnel": 2, "dr": 3}
FORWARD_NAMES: dict[int, str] = {0: "nat", 1: "local", 2: "tunnel", 3: "dr", 4: "bypass"}

# IP_VS_SVC_F_* service flags.
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002  # kernel-internal: set on every hashed service, never ours to manage
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008  # mh: fallback
SVC_F_SCHED2 = 0x0010  # mh: hash the client port too
SVC_F_SCHED3 = 0x0020
MH_FALLBACK = SVC_F_SCHED1
MH_PORT = SVC_F_SCHED2
MANAGED_FLAGS = SVC_F_PERSISTENT | SVC_F_ONEPACKET | SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3

# Maglev lookup table sizes by CONFIG_IP_VS_MH_TAB_INDEX (8..17).
MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_MH_TAB_INDEX = 12


def parse_ip(text: str) -> IPAddress:
    """An IPv4 or IPv6 address, strictly (no "10.1" shorthand); ValueError otherwise.

    inet_pton and the packed constructors are ~10x faster than ipaddress.ip_address, which matters
    for a config with tens of thousands of servers.
    """
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        pass
    try:
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def mh_table_size(tab_index: int = DEFAULT_MH_TAB_INDEX) -> int:
    """M, the number of slots of an ip_vs_mh lookup table (a prime)."""
    return MH_PRIMES[tab_index - 8]


def family_name(family: int) -> str:
    return "ipv6" if family == socket.AF_INET6 else "ipv4"


def format_endpoint(address: IPAddress, port: int) -> str:
    """`10.0.0.1:80` or `[2001:db8::1]:80`, the form ipvsadm and the config use."""
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


@dataclass(frozen=True)
class ServiceKey:
    """What identifies a virtual service in the kernel: (protocol, address, port) or a fwmark.

    `sort_key()` gives a stable, readable order for listings: fwmark services after the others.
    """

    family: int
    fwmark: int = 0
    protocol: int = 0
    address: IPAddress | None = None
    port: int = 0

    def __hash__(self) -> int:
        # Hashed once, and not through ipaddress's hex(): services are dict and set keys of every
        # pass and reload.
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            address = int(self.address) if self.address is not None else 0
            cached = hash((self.family, self.fwmark, self.protocol, address, self.port))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __str__(self) -> str:
        if self.fwmark:
            return f"fwmark:{self.fwmark}/{family_name(self.family)}"
        assert self.address is not None
        proto = PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
        return f"{proto}:{format_endpoint(self.address, self.port)}"

    def sort_key(self) -> tuple[bool, int, int, int, int, int]:
        addr = int(self.address) if self.address is not None else 0
        return (self.fwmark != 0, self.family, self.fwmark, self.protocol, addr, self.port)


@dataclass(frozen=True, slots=True)
class DestKey:
    """What identifies a destination inside one service: its address and port."""

    address: IPAddress
    port: int
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((int(self.address), self.port)))

    def __hash__(self) -> int:
        # Computed once (ipaddress hashes through hex()): a pass hashes every key three or more
        # times (membership, health, the plan's dicts), a dump builds it once.
        return self._hash

    def canonical(self) -> tuple[int, int, int]:
        """The canonical position of this destination in an mh service's list.

        A function of the destination alone, so every director orders the same set the same way,
        whatever order the YAML lists the servers in and whatever add/remove history it has.
        """
        return (self.address.version, int(self.address), self.port)

    def __str__(self) -> str:
        return format_endpoint(self.address, self.port)


class Stats(NamedTuple):
    """Kernel counters of a service or destination: reported, never planned on.

    A NamedTuple because a dump builds one per destination (16,000 on a large director) and a
    frozen dataclass costs several times more to construct.
    """

    active_conns: int = 0
    inactive_conns: int = 0
    persist_conns: int = 0
    conns: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_bytes: int = 0
    out_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Dest:
    """One real server of a service, with the attributes mhd manages."""

    key: DestKey
    weight: int = 1
    forward: int = FORWARD_METHODS["nat"]
    u_threshold: int = 0
    l_threshold: int = 0
    stats: Stats = field(default=Stats(), compare=False)

    def settings(self) -> tuple[int, int, int, int]:
        """What an in-place edit (IPVS_CMD_SET_DEST) can change."""
        return (self.weight, self.forward, self.u_threshold, self.l_threshold)


@dataclass(frozen=True)
class Service:
    """A virtual service: its key, scheduler, flags and destinations.

    `dests` is in kernel list order (head first, as a dump returns it) for an observed service, and in
    canonical order for a desired one.
    """

    key: ServiceKey
    scheduler: str = "mh"
    flags: int = 0
    timeout: int = 0
    netmask: int = 0
    dests: tuple[Dest, ...] = ()
    stats: Stats = field(default=Stats(), compare=False)

    @property
    def managed_flags(self) -> int:
        return self.flags & MANAGED_FLAGS

    def settings(self) -> tuple[str, int]:
        """What an in-place edit (IPVS_CMD_SET_SERVICE) changes and mhd manages."""
        return (self.scheduler, self.managed_flags)

    def dest(self, key: DestKey) -> Dest | None:
        for d in self.dests:
            if d.key == key:
                return d
        return None


NO_SCHEDULER = "none"  # the kernel's name for a service without a scheduler: it schedules nothing

OpKind = Literal["add-service", "edit-service", "delete-service", "add-dest", "edit-dest", "delete-dest"]
