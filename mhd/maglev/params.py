"""Which Maglev table the kernel builds: the ip_vs_mh variant and the table size.

One rule for the API, the metrics and mhctl: the config's `kernel.module` when it names a variant,
else the module the running kernel has loaded (in-tree when none is); the table size from
`CONFIG_IP_VS_MH_TAB_INDEX` (or the config's override, which the caller resolves). Pure and free of
numpy, so a reader can decide the parameters without loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mhd.config.records import ServiceConfig
from mhd.model import DEFAULT_MH_TAB_INDEX, DestKey, mh_table_size

Variant = Literal["intree", "backport"]


@dataclass(frozen=True)
class Model:
    """The running kernel's Maglev parameters."""

    tab_index: int = DEFAULT_MH_TAB_INDEX
    variant: Variant = "intree"

    @property
    def size(self) -> int:
        """Slots of the table (a prime)."""
        return mh_table_size(self.tab_index)


def model_for(module: str, running: Variant | None, tab_index: int | None) -> Model:
    """The model for a config's `kernel.module` (auto, intree or backport), the variant the kernel
    runs (None: ip_vs_mh not loaded) and the table index (None: the kernel's default)."""
    chosen: dict[str, Variant] = {"intree": "intree", "backport": "backport"}
    return Model(tab_index or DEFAULT_MH_TAB_INDEX, chosen.get(module, running or "intree"))


def kept_weights(svc: ServiceConfig | None) -> dict[DestKey, int]:
    """The slots each weight-0 destination of a service mhd manages keeps: its configured weight.

    The kernel's `last_weight` cannot be dumped, but mhd only ever sets weight 0 to quiesce a
    server, after adding it at its configured weight (`mhd.planner.Desired.quiesced`); a
    destination the model is not told about is taken as added at weight 0 (no slots)."""
    return {s.key: s.weight for s in svc.servers} if svc is not None else {}
