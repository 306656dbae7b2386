"""What the API, the status documents and the metrics read of the daemon: a read-only view.

The API never imports the daemon: it is handed an object that has these members, and `Daemon`
has them (mypy checks it where `mhd.daemon.main` passes the daemon to `mhd.api.server.start`). The
types are the core's, or protocols of their own for what the daemon holds from other layers (its
state dir, the kernel facts, the prober, the last pass).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from mhd.announce import Decision, Record
from mhd.config.checkspec import CheckSpec
from mhd.config.records import Config
from mhd.health import CheckResult, Health
from mhd.maglev.params import Variant
from mhd.model import DestKey, IPAddress, Service, ServiceKey
from mhd.reports import ReloadResult

# A probe's identity, its due time (loop clock), its lag behind that (s) and its result.
ProbeHook = Callable[[tuple[CheckSpec, str, int, str], float, float, CheckResult], None]


class Drains(Protocol):
    """The state dir's record of operator-disabled servers."""

    def disabled(self) -> dict[str, set[str]]: ...


class KernelFacts(Protocol):
    """What the daemon found out about the running kernel at start."""

    @property
    def mh_variant(self) -> Variant | None: ...
    @property
    def mh_tab_index(self) -> int: ...
    def to_json(self) -> dict[str, object]: ...


class Panic(Protocol):
    @property
    def panic(self) -> bool: ...


class PassView(Protocol):
    """The last reconcile pass: per service, whether the min-healthy guard fired."""

    @property
    def members(self) -> Mapping[str, Panic]: ...


class ProbeCounters(Protocol):
    @property
    def failures(self) -> int: ...
    @property
    def inconclusive(self) -> int: ...


class ProberView(Protocol):
    """Health and counters per target; a target is a value of `DaemonView.targets`, opaque here."""

    @property
    def probe_count(self) -> int: ...
    def health(self, target: Any, /) -> Health: ...
    def counters(self, target: Any, /) -> ProbeCounters: ...
    def sharing(self, target: Any, /) -> Sequence[str]: ...  # services fed by its probe, sorted


class SysctlView(Protocol):
    @property
    def desired(self) -> Mapping[str, int]: ...
    @property
    def current(self) -> Mapping[str, int | None]: ...
    @property
    def repairs(self) -> int: ...
    @property
    def failures(self) -> Mapping[str, str]: ...


class FleetView(Protocol):
    """The fleet step (`mhd.announcer`): the drain flag, the announcement decision, the IPVS sysctls
    and the table digests of the live mh services."""

    @property
    def drained(self) -> bool: ...
    @property
    def records(self) -> Mapping[IPAddress, Record]: ...
    @property
    def decision(self) -> Decision | None: ...
    @property
    def sysctls(self) -> SysctlView: ...
    @property
    def tables(self) -> Mapping[str, Mapping[str, Any]]: ...
    @property
    def failures(self) -> list[str]: ...
    @property
    def foreign(self) -> list[str]: ...
    @property
    def route_writes(self) -> int: ...
    def withdrawn(self) -> bool: ...


class DaemonView(Protocol):
    """The daemon as its readers see it; the writes are requests the daemon carries out."""

    @property
    def config(self) -> Config | None: ...
    @property
    def config_path(self) -> str: ...
    @property
    def loaded_at(self) -> float: ...
    @property
    def last_reload(self) -> ReloadResult | None: ...
    @property
    def reload_counts(self) -> Mapping[str, int]: ...
    @property
    def kernel(self) -> KernelFacts | None: ...
    @property
    def state(self) -> Drains | None: ...
    @property
    def observed(self) -> Mapping[ServiceKey, Service]: ...
    @property
    def outcome(self) -> PassView | None: ...
    @property
    def targets(self) -> Mapping[tuple[str, DestKey], Any]: ...
    @property
    def prober(self) -> ProberView: ...
    @property
    def reconciles(self) -> int: ...
    @property
    def drift_repairs(self) -> int: ...
    @property
    def transitions(self) -> int: ...
    @property
    def op_counts(self) -> Mapping[str, int]: ...
    @property
    def hooks(self) -> list[Callable[[], None]]: ...  # called after every reconcile pass
    @property
    def probe_hooks(self) -> list[ProbeHook]: ...  # called after every probe
    @property
    def fleet(self) -> FleetView | None: ...

    def status_line(self) -> str: ...
    def health(self, service: str, server: DestKey) -> Health | None: ...
    def set_disabled(self, service: str, server: str, disabled: bool) -> str: ...
    def request_reload(self) -> asyncio.Future[ReloadResult]: ...
    def set_drained(self, drained: bool) -> None: ...
