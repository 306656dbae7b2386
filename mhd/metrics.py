"""Prometheus metrics: a collector that reads the daemon's state at scrape time.

Gauges are not updated by hand as things happen: every scrape walks the config, the last kernel dump
and the prober's per-server state, so a metric can never disagree with `GET /v1/status` or go stale
when a server leaves the config. Only what is not kept anywhere else is accumulated here: probe
durations and due-time lag (histograms fed by a probe hook) and reloads by result.

Kernel counters use node_exporter's IPVS label names (`local_address`, `local_port`, `remote_address`,
`remote_port`, `proto`) plus `service`, so dashboards written for `node_ipvs_backend_*` work on
`mhd_ipvs_backend_*` after a rename. Only services in the config are exported; anything else in IPVS
is not mhd's (node_exporter covers it).

`mhd_server_slot_share` is the share of the Maglev table each server holds, predicted by
`mhd.maglev` from the kernel's destination list (cached until that list changes); it is skipped when
the model is not available.
"""

from __future__ import annotations

import importlib
import logging
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .model import PROTOCOL_NAMES, DestKey, Service, ServiceKey
from .status import SERVICE_STATES, service_state

if TYPE_CHECKING:
    from .checkers import CheckResult
    from .config import ServiceConfig
    from .daemon import Daemon, ReloadResult
    from .prober import CheckKey

log = logging.getLogger("mhd.metrics")

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "service")
SERVER_LABELS = ("service", "remote_address", "remote_port")


def backend_labels(name: str, key: ServiceKey, server: DestKey) -> list[str]:
    """node_exporter's label values: proto TCP/UDP/SCTP, FWM for a fwmark service."""
    proto = "FWM" if key.fwmark else PROTOCOL_NAMES.get(key.protocol, str(key.protocol)).upper()
    local = str(key.address) if key.address is not None else ""
    return [local, str(key.port), str(server.address), str(server.port), proto, name]


def server_labels(name: str, server: DestKey) -> list[str]:
    return [name, str(server.address), str(server.port)]


class SlotShares:
    """Maglev table shares per kernel destination list, computed once per distinct list.

    Building a table costs milliseconds (numpy), far too much for every scrape of a big config, and
    the list only changes when a server is added or removed.
    """

    def __init__(self) -> None:
        self._cache: dict[ServiceKey, tuple[object, dict[DestKey, float]]] = {}
        self._model: Any = None
        self._looked_up = False

    def model(self) -> Any:
        """`mhd.maglev` when it is importable and has `build_table`, else None (looked up once)."""
        if not self._looked_up:
            self._looked_up = True
            try:
                module = importlib.import_module("mhd.maglev")
            except Exception as exc:  # an optional model: never fail a scrape over it
                log.info("no Maglev model, mhd_server_slot_share not exported: %s", exc)
                return None
            self._model = module if callable(getattr(module, "build_table", None)) else None
        return self._model

    def shares(self, observed: Service, tab_index: int, variant: str) -> dict[DestKey, float]:
        signature = (tuple((d.key, d.weight) for d in observed.dests), tab_index, variant)
        cached = self._cache.get(observed.key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        shares = self._compute(observed, tab_index, variant)
        self._cache[observed.key] = (signature, shares)
        return shares

    def _compute(self, observed: Service, tab_index: int, variant: str) -> dict[DestKey, float]:
        model = self.model()
        if model is None or not observed.dests:
            return {}
        dests = [model.MhDest(str(d.key.address), d.key.port, d.weight) for d in observed.dests]
        family = 6 if observed.key.family == socket.AF_INET6 else 4
        try:
            table = model.build_table(dests, tab_index=tab_index, variant=variant, family=family)
            return dict(zip((d.key for d in observed.dests), table.slot_shares(), strict=True))
        except Exception:
            log.exception("Maglev model failed for %s", observed.key)
            return {}

    def retain(self, keys: Iterable[ServiceKey]) -> None:
        """Forget services no longer in the kernel, so the cache never outgrows the config."""
        keep = set(keys)
        for key in [k for k in self._cache if k not in keep]:
            del self._cache[key]


class DaemonCollector(Collector):
    """Everything derived from the daemon's state, read at scrape time."""

    def __init__(self, daemon: Daemon, metrics: Metrics) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.slots = SlotShares()

    def describe(self) -> Iterable[Metric]:
        return []  # the set of series depends on the config: nothing to declare up front

    def collect(self) -> Iterator[Metric]:
        yield from self._daemon_metrics()
        families = _Families()
        disabled = self.daemon.state.disabled() if self.daemon.state is not None else {}
        services = self.daemon.config.services if self.daemon.config is not None else ()
        for svc in services:
            self._service(families, svc, disabled.get(svc.name, set()))
        self.slots.retain(svc.key for svc in services)
        yield from families.all()

    def _daemon_metrics(self) -> Iterator[Metric]:
        d = self.daemon
        info = GaugeMetricFamily("mhd_build_info", "mhd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield CounterMetricFamily("mhd_reconciles", "Completed reconcile passes", value=d.reconciles)
        yield CounterMetricFamily(
            "mhd_drift_repairs",
            "Reconcile passes that repaired a change made outside mhd",
            value=d.drift_repairs,
        )
        yield CounterMetricFamily(
            "mhd_health_transitions", "Server health transitions, all services", value=d.transitions
        )
        ops = CounterMetricFamily(
            "mhd_reconcile_operations", "IPVS operations written, by kind", labels=["kind"]
        )
        for kind, count in sorted(d.op_counts.items()):
            ops.add_metric([kind], count)
        yield ops
        reloads = CounterMetricFamily("mhd_reloads", "Config reloads, by result", labels=["result"])
        for result, count in self.metrics.reload_counts().items():
            reloads.add_metric([result], count)
        yield reloads
        last_ok = d.last_reload.ok if d.last_reload is not None else True
        yield GaugeMetricFamily(
            "mhd_config_last_reload_successful", "1 if the last reload succeeded", value=int(last_ok)
        )
        yield GaugeMetricFamily(
            "mhd_config_loaded_timestamp_seconds", "When the running config was loaded", value=d.loaded_at
        )
        yield GaugeMetricFamily(
            "mhd_last_reconcile_timestamp_seconds",
            "When the last reconcile pass completed",
            value=self.metrics.last_reconcile_wall,
        )
        yield GaugeMetricFamily("mhd_probes", "Distinct health probes scheduled", value=d.prober.probe_count)

    def _service(self, f: _Families, svc: ServiceConfig, disabled: set[str]) -> None:
        d = self.daemon
        observed = d.observed.get(svc.key)
        dests = {x.key: x for x in observed.dests} if observed is not None else {}
        membership = d.outcome.members.get(svc.name) if d.outcome is not None else None
        panic = bool(membership and membership.panic)
        f.panic.add_metric([svc.name], int(panic))
        enabled_ok = True
        for server in svc.servers:
            labels = server_labels(svc.name, server.key)
            health = d.health(svc.name, server.key)
            up = health is not None and health.state == "up"
            off = str(server.key) in disabled
            enabled_ok &= off or (up and server.key in dests)
            f.up.add_metric(labels, int(up))
            f.in_kernel.add_metric(labels, int(server.key in dests))
            f.disabled.add_metric(labels, int(off))
            f.transitions.add_metric(labels, health.transitions if health is not None else 0)
            target = d.targets.get((svc.name, server.key))
            if target is not None:
                counters = d.prober.counters(target)
                f.checks.add_metric(labels, counters.probes)
                f.failures.add_metric(labels, counters.failures)
        state = service_state(bool(dests), panic, enabled_ok)
        for name in SERVICE_STATES:
            f.state.add_metric([svc.name, name], int(name == state))
        if observed is not None:
            self._backends(f, svc.name, observed)

    def _backends(self, f: _Families, name: str, observed: Service) -> None:
        shares: dict[DestKey, float] = {}
        kernel = self.daemon.kernel
        if observed.scheduler == "mh" and kernel is not None:
            shares = self.slots.shares(observed, kernel.mh_tab_index, self._variant())
        for dest in observed.dests:
            labels = backend_labels(name, observed.key, dest.key)
            s = dest.stats
            f.active.add_metric(labels, s.active_conns)
            f.inactive.add_metric(labels, s.inactive_conns)
            f.weight.add_metric(labels, dest.weight)
            f.conns.add_metric(labels, s.conns)
            f.packets.add_metric([*labels, "in"], s.in_packets)
            f.packets.add_metric([*labels, "out"], s.out_packets)
            f.bytes.add_metric([*labels, "in"], s.in_bytes)
            f.bytes.add_metric([*labels, "out"], s.out_bytes)
            if dest.key in shares:
                f.share.add_metric(server_labels(name, dest.key), shares[dest.key])

    def _variant(self) -> str:
        """The module whose table to predict: the config's choice, else what the kernel runs."""
        config, kernel = self.daemon.config, self.daemon.kernel
        if config is not None and config.kernel.module in ("intree", "backport"):
            return config.kernel.module
        return (kernel.mh_variant if kernel is not None else None) or "intree"


class _Families:
    """The per-service and per-server families of one scrape."""

    def __init__(self) -> None:
        s, b = list(SERVER_LABELS), list(BACKEND_LABELS)
        self.up = GaugeMetricFamily("mhd_server_up", "1 if the server's health is up", labels=s)
        self.in_kernel = GaugeMetricFamily("mhd_server_in_kernel", "1 if the server is in IPVS", labels=s)
        self.disabled = GaugeMetricFamily("mhd_server_disabled", "1 if an operator disabled it", labels=s)
        self.transitions = CounterMetricFamily(
            "mhd_server_transitions", "Health transitions of the server", labels=s
        )
        self.checks = CounterMetricFamily("mhd_checks", "Health probes run for the server", labels=s)
        self.failures = CounterMetricFamily("mhd_check_failures", "Failed health probes", labels=s)
        self.share = GaugeMetricFamily(
            "mhd_server_slot_share", "Share of the Maglev table the server holds (model)", labels=s
        )
        self.panic = GaugeMetricFamily(
            "mhd_service_panic", "1 if the min-healthy guard keeps unhealthy servers", labels=["service"]
        )
        self.state = GaugeMetricFamily(
            "mhd_service_state", "1 for the service's current state", labels=["service", "state"]
        )
        self.active = GaugeMetricFamily(
            "mhd_ipvs_backend_connections_active", "Active connections (kernel)", labels=b
        )
        self.inactive = GaugeMetricFamily(
            "mhd_ipvs_backend_connections_inactive", "Inactive connections (kernel)", labels=b
        )
        self.weight = GaugeMetricFamily("mhd_ipvs_backend_weight", "Weight in IPVS", labels=b)
        self.conns = CounterMetricFamily("mhd_ipvs_backend_connections", "Connections (kernel)", labels=b)
        self.packets = CounterMetricFamily(
            "mhd_ipvs_backend_packets", "Packets (kernel)", labels=[*b, "direction"]
        )
        self.bytes = CounterMetricFamily("mhd_ipvs_backend_bytes", "Bytes (kernel)", labels=[*b, "direction"])

    def all(self) -> Sequence[Metric]:
        families: list[Metric] = [
            self.up, self.in_kernel, self.disabled, self.transitions, self.checks, self.failures,
            self.panic, self.state, self.active, self.inactive, self.weight, self.conns, self.packets,
            self.bytes,
        ]  # fmt: skip
        if self.share.samples:
            families.append(self.share)
        return families


class Metrics:
    """The registry of one daemon: the scrape-time collector plus the probe histograms.

    `install()` hooks into the daemon, `uninstall()` unhooks (the API's closer calls it).
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=False)
        self.check_duration = Histogram(
            "mhd_check_duration_seconds",
            "Duration of health probes, by check type",
            ["check"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.check_lag = Histogram(
            "mhd_check_lag_seconds",
            "Delay between a probe's due time and its start (scheduler lag)",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.probe_failures = Counter(
            "mhd_probe_failures", "Failed probes, by check type", ["check"], registry=self.registry
        )
        self.registry.register(DaemonCollector(daemon, self))
        self._reloads = {"ok": 0, "error": 0}
        self._seen_reload: ReloadResult | None = daemon.last_reload
        self.last_reconcile = time.monotonic()
        self.last_reconcile_wall = time.time()

    def install(self) -> None:
        self.daemon.probe_hooks.append(self.on_probe)
        self.daemon.hooks.append(self.on_reconcile)

    def uninstall(self) -> None:
        for hooks, hook in ((self.daemon.probe_hooks, self.on_probe), (self.daemon.hooks, self.on_reconcile)):
            if hook in hooks:
                hooks.remove(hook)  # type: ignore[arg-type]

    def on_probe(self, key: CheckKey, due: float, lag: float, result: CheckResult) -> None:
        kind = key[0].type
        self.check_duration.labels(kind).observe(result.latency)
        self.check_lag.observe(max(lag, 0.0))
        if not result.ok:
            self.probe_failures.labels(kind).inc()

    def on_reconcile(self) -> None:
        self.last_reconcile = time.monotonic()
        self.last_reconcile_wall = time.time()
        self.note_reload()

    def note_reload(self) -> None:
        """Count a reload the first time its result is seen (after a pass, or by the API)."""
        result = self.daemon.last_reload
        if result is not None and result is not self._seen_reload:
            self._seen_reload = result
            self._reloads["ok" if result.ok else "error"] += 1

    def reload_counts(self) -> dict[str, int]:
        own = getattr(self.daemon, "reload_counts", None)  # the daemon's own count, when it keeps one
        if isinstance(own, dict):
            return {str(k): int(v) for k, v in own.items()}
        self.note_reload()
        return dict(self._reloads)

    def render(self) -> bytes:
        return generate_latest(self.registry)
