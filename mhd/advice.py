"""Fleet advice for `mhctl check` and `mhctl plan`: valid configs that a Maglev fleet may regret.

Pure: a config and the kernel's table size in, warnings out. Each warning names the service and,
when the caller knows where the service is declared (`positions`: name -> "file:line"), its place,
so it reads like a config error but does not stop anything.

- `mh-port`: an `mh` service without `mh-port` hashes the client address only, so every connection
  of one address (every client behind a NAT or a proxy) goes to one server.
- `table-balance`: with N servers a table of M slots gives each server its share to within one slot
  in M, a relative error of about N/M; past M/100 servers some server is off its share by more than
  1 %. A larger CONFIG_IP_VS_MH_TAB_INDEX (a kernel build option) or fewer servers per service fix it.
- `weights-shifted`: `ip_vs_mh` divides the weights by their gcd and then shifts them right until
  the largest fits in TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2 bits (6 bits, 63, on Debian); the
  shifted weights (a weight shifted to 0 becomes 1) are what the table honours, so the servers'
  shares are not the configured ratios. Weights whose ratio stays under 2**TAB_BITS are safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Literal

from mhd.config.records import Config, ServiceConfig
from mhd.config.yamlsource import Located
from mhd.maglev.table import _turns, table_size
from mhd.model import MH_PORT

AdviceCode = Literal["mh-port", "table-balance", "weights-shifted"]


@dataclass(frozen=True)
class Advice:
    service: str
    code: AdviceCode
    message: str
    where: str = ""  # "file:line" of the service, when known

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}warning: service {self.service}: {self.message} [{self.code}]"

    def to_json(self) -> dict[str, str]:
        return {"service": self.service, "code": self.code, "message": self.message, "where": self.where}


def advise(config: Config, tab_index: int, positions: Mapping[str, str] | None = None) -> list[Advice]:
    """Every warning for the config's `mh` services, in config order."""
    out: list[Advice] = []
    for svc in config.services:
        out += advise_service(svc, tab_index, (positions or {}).get(svc.name, ""))
    return out


def positions(file: str, root: Located) -> dict[str, str]:
    """name -> "file:line" of each service item of a parsed file (`mhd.config.yamlsource.parse`):
    warnings point where the operator declared the service, as errors do."""
    services = root.value.get("services") if isinstance(root.value, dict) else None
    items = services.value if services is not None and isinstance(services.value, list) else []
    out: dict[str, str] = {}
    for item in items:
        name = item.value.get("name") if isinstance(item.value, dict) else None
        if name is not None and isinstance(name.value, str):
            out.setdefault(name.value, f"{file}:{item.line}")
    return out


def advise_service(svc: ServiceConfig, tab_index: int, where: str = "") -> list[Advice]:
    if svc.scheduler != "mh":
        return []
    out = []
    if not svc.flags & MH_PORT:
        out.append(
            Advice(
                svc.name,
                "mh-port",
                "scheduler mh without mh-port hashes the client address only: every connection of one "
                "address (all clients behind a NAT) goes to one server; add mh-port: true unless "
                "clients must stick to a server by address",
                where,
            )
        )
    m = table_size(tab_index)
    n = len(svc.servers)
    if n > m // 100:
        out.append(
            Advice(
                svc.name,
                "table-balance",
                f"{n} servers in a table of {m} slots: a server's share can be off by one slot in "
                f"{m} (about {100 * n / m:.1f} % of its fair share), more than 1 % past {m // 100} "
                "servers; use fewer servers per service or a kernel with a larger "
                "CONFIG_IP_VS_MH_TAB_INDEX",
                where,
            )
        )
    shifted = shifted_weights([s.weight for s in svc.servers], tab_index)
    if shifted is not None:
        pairs = ", ".join(
            f"{s.key} {s.weight} -> {t}" for s, t in zip(svc.servers, shifted, strict=True) if s.weight
        )
        limit = 2 ** (tab_index // 2)
        out.append(
            Advice(
                svc.name,
                "weights-shifted",
                f"the kernel reduces the weights to fit {tab_index // 2} bits (ratios below {limit}): "
                f"{pairs} (relative), so shares do not follow the configured weights; keep the largest "
                f"weight under {limit} times the gcd of the weights",
                where,
            )
        )
    return out


def shifted_weights(weights: Sequence[int], tab_index: int) -> list[int] | None:
    """The kernel's per-round turns when they are not the configured ratios, else None."""
    turns = _turns(weights, tab_index // 2)
    positive = [w for w in weights if w > 0]
    if not positive:
        return None
    g = reduce(math.gcd, positive)
    if all(t == w // g for w, t in zip(weights, turns, strict=True) if w > 0):
        return None
    return turns
