"""The fleet keys of a config: `announce:`, a fwmark service's `announce:` list and `kernel.sysctl:`.

Read like every other key (a Problem at file:line with the fix, None instead of raising); the rules
themselves are the ones the kernel edges apply: `mhd.announce.route_key_problems` for the table and
protocol, `mhd.sysctl_policy.validate` for the settings, so a config that passes here is one the
edges accept. Whether a setting exists on the running kernel is known only there: the daemon
reports a missing one when it writes it.
"""

from __future__ import annotations

import re
import socket

from mhd.announce import DEFAULT_PROTOCOL, Options, route_key_problems
from mhd.config.fields import FieldReader
from mhd.config.records import AnnounceConfig
from mhd.config.yamlsource import Located, shown
from mhd.model import IPAddress, ServiceKey
from mhd.sysctl_policy import validate as validate_sysctl

ANNOUNCE_KEYS = ("table", "protocol", "vip-interface", "hold-down", "panic")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # IFNAMSIZ - 1, no slash or white space


class FleetReader(FieldReader):
    def announce_config(self, node: Located) -> AnnounceConfig | None:
        """The top-level `announce:` mapping; `table:` is required."""
        m = self.mapping(node, ANNOUNCE_KEYS, "announce")
        if m is None:
            return None
        start = len(self.problems)
        if "table" not in m:
            self.error(
                node,
                "announce needs table: the number of a routing table of mhd's own, such as 100",
                at_key=True,
            )
        table = self.integer(m["table"], "announce.table", 1, 0xFFFFFFFF) if "table" in m else None
        protocol = (
            self.integer(m["protocol"], "announce.protocol", 1, 255) if "protocol" in m else DEFAULT_PROTOCOL
        )
        for message in route_key_problems(table or 1, protocol or DEFAULT_PROTOCOL):  # 1, 250: valid
            which = "protocol" if message.startswith("announce.protocol") else "table"
            self.error(m[which], message)
        interface = None
        if "vip-interface" in m:
            interface = self.typed(m["vip-interface"], str, "announce.vip-interface")
            if interface is not None and not IFNAME_RE.match(interface):
                self.error(
                    m["vip-interface"],
                    f"announce.vip-interface {shown(interface)} is not an interface name (1 to 15 of A-Z a-z 0-9 _ . : -)",
                )
        hold_down = Options().hold_down
        if "hold-down" in m:
            hold_down = self.duration(m["hold-down"], "announce.hold-down") or hold_down
        panic = "announce"
        if "panic" in m:
            panic = self.choice(m["panic"], "announce.panic", ("announce", "withdraw")) or panic
        if len(self.problems) > start or table is None or protocol is None:
            return None
        return AnnounceConfig(table, protocol, interface, hold_down, panic == "announce")

    def announce_list(self, node: Located, key: ServiceKey | None) -> tuple[IPAddress, ...]:
        """A service's `announce: [addr, ...]`: only for fwmark services, whose VIPs the config names."""
        if key is not None and not key.fwmark:
            self.error(
                node,
                "announce: lists the VIPs of a fwmark service; this service announces its own address: remove it",
                at_key=True,
            )
            return ()
        if not isinstance(node.value, list) or not node.value:
            self.error(node, "announce must be a list of addresses, such as [203.0.113.10, 2001:db8::10]")
            return ()
        out: list[IPAddress] = []
        for item in node.value:
            address = self.address(item, "announce")
            if address is None:
                continue
            if key is not None and (address.version == 6) != (key.family == socket.AF_INET6):
                family = "ipv6" if key.family == socket.AF_INET6 else "ipv4"
                self.error(item, f"announce {address} is not of the service's family ({family})")
            elif address in out:
                self.error(item, f"announce {address} is listed twice: remove one")
            else:
                out.append(address)
        return tuple(out)

    def sysctl_map(self, node: Located) -> tuple[tuple[str, int | None], ...]:
        """`kernel.sysctl:`: net.ipv4.vs.NAME -> integer, or null to leave the kernel's value."""
        if not isinstance(node.value, dict):
            self.error(node, "kernel.sysctl must be a mapping such as {net.ipv4.vs.sloppy_tcp: 1}")
            return ()
        nodes = {str(k): v for k, v in node.value.items()}
        settings, problems = validate_sysctl({k: v.value for k, v in nodes.items()})
        for name, message in problems:
            self.error(nodes[name], f"kernel.sysctl: {message}", at_key=True)
        return tuple(sorted(settings.items()))
