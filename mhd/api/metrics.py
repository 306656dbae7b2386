"""Prometheus metrics: a collector that reads the daemon's state at scrape time.

Gauges are not updated by hand as things happen: every scrape walks the config, the last kernel dump
and the prober's per-server state, so a metric can never disagree with `GET /v1/status` or go stale
when a server leaves the config. Only what is not kept anywhere else is accumulated, in
prometheus_client objects: probe durations and due-time lag (histograms fed by a probe hook) and
probe failures by check type. Reloads are the daemon's own count.

Kernel counters use node_exporter's IPVS label names (`local_address`, `local_port`, `remote_address`,
`remote_port`, `proto`) plus `service`, so dashboards written for `node_ipvs_backend_*` work on
`mhd_ipvs_backend_*` after a rename. Only services in the config are exported; anything else in IPVS
is not mhd's (node_exporter covers it).

Speed: prometheus_client's own exposition of a large config's series would block the daemon's only
loop, and every probe with it, for seconds per scrape (docs/design.md, "Metrics exposition"). So
`DaemonCollector` builds light `Family` rows whose label text is formatted once per server and
cached, and `/metrics` writes them directly (`render_families`); the same families convert to
prometheus_client `Metric`s for any registry (`collect()`), and a test checks that both expositions
parse to the same samples.

`mhd_server_slot_share` is the share of the Maglev table each server holds, predicted by
`mhd.maglev.predict` from the kernel's destination list. A table takes milliseconds to build, so shares
are computed in a worker thread once per distinct list and appear from the scrape after it finished;
they are skipped when the model is not available.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mhd import __version__
from mhd.api import model
from mhd.api.status import in_panic
from mhd.api.view import DaemonView
from mhd.membership import SERVICE_STATES, service_state
from mhd.model import PROTOCOL_NAMES, DestKey, Service, ServiceKey

if TYPE_CHECKING:
    from mhd.config.checkspec import CheckSpec
    from mhd.config.records import Config, ServiceConfig
    from mhd.health import CheckResult
    from mhd.maglev.params import Model

log = logging.getLogger("mhd.metrics")

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "service")
SERVICE_LABELS = ("local_address", "local_port", "proto", "service")
SERVER_LABELS = ("service", "remote_address", "remote_port")

Labels = tuple[tuple[str, ...], str]  # label values, and their exposition text {a="b",...}


def label_text(names: Iterable[str], values: Iterable[str]) -> str:
    """`{name="value",...}`, escaped as the text format requires; names sorted like prometheus_client."""
    pairs = sorted(zip(names, values, strict=True))
    escaped = (v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"") for _, v in pairs)
    return "{" + ",".join(f'{n}="{v}"' for (n, _), v in zip(pairs, escaped, strict=True)) + "}"


@dataclass
class Family:
    """One metric family of a scrape: rows of (labels, value), labels pre-formatted."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...] = ()
    rows: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float) -> None:
        self.rows.append((labels, value))

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def metric(self) -> Metric:
        """The same family as a prometheus_client Metric (for `Collector.collect`)."""
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.help, labels=list(self.labels))
        for (values, _), value in self.rows:
            family.add_metric(list(values), value)
        return family

    def text(self, out: list[str]) -> None:
        name = self.sample_name
        doc = self.help.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {self.kind}\n")
        out.extend([f"{name}{text} {value}\n" for (_, text), value in self.rows])  # str(): valid floats


def render_families(families: Iterable[Family]) -> str:
    out: list[str] = []
    for family in families:
        family.text(out)
    return "".join(out)


class ServerRow(NamedTuple):
    key: DestKey
    name: str
    labels: Labels
    target: Any  # the daemon's health target of the server (None: none yet)


class LabelCache:
    """Label values and text per server and per backend, built once per config."""

    def __init__(self) -> None:
        self._config: Config | None = None
        self._cache: dict[tuple[Any, ...], Labels] = {}
        self._rows: dict[str, list[ServerRow]] = {}

    def reset_for(self, config: Config | None) -> None:
        """Forget everything when the config changed (a reload also replaces the health targets)."""
        if config is not self._config:
            self._config = config
            self._cache.clear()
            self._rows.clear()

    def servers(self, svc: ServiceConfig, targets: Mapping[tuple[str, DestKey], Any]) -> list[ServerRow]:
        """Per configured server: key, its text form, labels and health target (built once per config)."""
        rows = self._rows.get(svc.name)
        if rows is None:
            rows = []
            for server in svc.servers:
                key = server.key
                rows.append(
                    ServerRow(key, str(key), self.server(svc.name, key), targets.get((svc.name, key)))
                )
            self._rows[svc.name] = rows
        return rows

    def server(self, service: str, server: DestKey) -> Labels:
        k = (service, server)
        found = self._cache.get(k)
        if found is None:
            values = (service, str(server.address), str(server.port))
            found = self._cache[k] = (values, label_text(SERVER_LABELS, values))
        return found

    def backend(self, service: str, key: ServiceKey, server: DestKey) -> Labels:
        k = (service, key, server)
        found = self._cache.get(k)
        if found is None:
            local, port, proto = service_endpoint(key)
            values = (local, port, str(server.address), str(server.port), proto, service)
            found = self._cache[k] = (values, label_text(BACKEND_LABELS, values))
        return found

    def service(self, service: str, key: ServiceKey, *extra: str) -> Labels:
        values = (*service_endpoint(key), service, *extra)
        names = SERVICE_LABELS + (("direction",) if extra else ())
        return values, label_text(names, values)

    def plain(self, names: tuple[str, ...], *values: str) -> Labels:
        return values, label_text(names, values)


def service_endpoint(key: ServiceKey) -> tuple[str, str, str]:
    """node_exporter's local_address, local_port and proto (TCP/UDP/SCTP; FWM for a fwmark service)."""
    proto = "FWM" if key.fwmark else PROTOCOL_NAMES.get(key.protocol, str(key.protocol)).upper()
    local = str(key.address) if key.address is not None else ""
    return local, str(key.port), proto


class SlotShares:
    """Maglev table shares per kernel destination list, computed off the loop, once per list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[ServiceKey, tuple[object, dict[DestKey, float]]] = {}
        self._pending: set[ServiceKey] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def shares(self, observed: Service, params: Model) -> dict[DestKey, float]:
        """The shares if known for this exact list; otherwise {} now, and computed for a later scrape.

        The model is loaded at start (`mhd.api.server.start`); otherwise the worker loads it, never
        the loop: numpy's import there stalls every probe.
        """
        if model.unavailable() or not observed.dests:
            return {}
        signature = (tuple((d.key, d.weight) for d in observed.dests), params)
        with self._lock:
            cached = self._cache.get(observed.key)
            if cached is not None and cached[0] == signature:
                return cached[1]
            if observed.key in self._pending:
                return {}
            self._pending.add(observed.key)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mhd-maglev")
        self._executor.submit(self._compute, observed, signature, params)
        return {}

    def _compute(self, observed: Service, signature: object, params: Model) -> None:
        shares: dict[DestKey, float] = {}
        predict = model.load()  # in the worker: see shares()
        try:
            if predict is not None:
                shares = predict.shares(observed, params)
        except Exception:
            log.exception("Maglev model failed for %s", observed.key)
        with self._lock:
            self._cache[observed.key] = (signature, shares)
            self._pending.discard(observed.key)

    def wait(self) -> None:
        """Block until every queued table is built (tests, benchmarks)."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()

    def retain(self, keys: Iterable[ServiceKey]) -> None:
        """Forget services no longer configured, so the cache never outgrows the config."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._cache if k not in keep]:
                del self._cache[key]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class DaemonCollector(Collector):
    """Everything derived from the daemon's state, read at scrape time."""

    def __init__(self, daemon: DaemonView, metrics: Metrics) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.slots = SlotShares()
        self.labels = LabelCache()

    def describe(self) -> Iterable[Metric]:
        return []  # the set of series depends on the config: nothing to declare up front

    def collect(self) -> Iterator[Metric]:
        for family in self.families():
            yield family.metric()

    def families(self) -> list[Family]:
        d = self.daemon
        self.labels.reset_for(d.config)
        out = self._daemon_families()
        f = _Families()
        disabled = d.state.disabled() if d.state is not None else {}
        services = d.config.services if d.config is not None else ()
        for svc in services:
            self._service(f, svc, disabled.get(svc.name, set()))
        self.slots.retain(svc.key for svc in services)
        return out + f.all()

    def _daemon_families(self) -> list[Family]:
        d, plain = self.daemon, self.labels.plain
        last_ok = d.last_reload.ok if d.last_reload is not None else True
        ops = Family("mhd_reconcile_operations", "counter", "IPVS operations written, by kind", ("kind",))
        for kind, count in sorted(d.op_counts.items()):
            ops.add(plain(("kind",), kind), count)
        reloads = Family("mhd_reloads", "counter", "Config reloads, by result", ("result",))
        for result, count in sorted(d.reload_counts.items()):
            reloads.add(plain(("result",), result), count)
        single = [
            ("mhd_reconciles", "counter", "Completed reconcile passes (whole or scoped)", d.reconciles),
            (
                "mhd_drift_repairs",
                "counter",
                "Whole passes that repaired changes made outside mhd",
                d.drift_repairs,
            ),
            ("mhd_health_transitions", "counter", "Server health transitions, all services", d.transitions),
            ("mhd_config_last_reload_successful", "gauge", "1 if the last reload succeeded", int(last_ok)),
            (
                "mhd_config_loaded_timestamp_seconds",
                "gauge",
                "When the running config was loaded",
                d.loaded_at,
            ),
            (
                "mhd_last_reconcile_timestamp_seconds",
                "gauge",
                "When the last reconcile pass completed",
                self.metrics.last_reconcile_wall,
            ),
            ("mhd_probes", "gauge", "Distinct health probes scheduled", d.prober.probe_count),
        ]
        info = Family("mhd_build_info", "gauge", "mhd version", ("version",))
        info.add(plain(("version",), __version__), 1)
        out = [info, ops, reloads, *self._fleet_families()]
        for name, kind, doc, value in single:
            family = Family(name, kind, doc)  # type: ignore[arg-type]
            family.add(((), ""), value)
            out.append(family)
        return out

    def _fleet_families(self) -> list[Family]:
        """The drain flag, each VIP's announcement and each live mh service's table digest."""
        fleet, plain = self.daemon.fleet, self.labels.plain
        if fleet is None:
            return []
        drained = Family("mhd_drained", "gauge", "1 if an operator drained this director (routes withdrawn)")
        drained.add(((), ""), int(fleet.drained))
        vips = Family("mhd_vip_announced", "gauge", "1 if this director announces the VIP", ("vip",))
        for vip, record in sorted(fleet.records.items(), key=lambda kv: (kv[0].version, int(kv[0]))):
            vips.add(plain(("vip",), str(vip)), int(record.announced))
        tables = Family(
            "mhd_service_table_info", "gauge", "Digest of the mh table the kernel builds", ("service", "digest")
        )
        for name, doc in sorted(fleet.tables.items()):
            tables.add(plain(("service", "digest"), name, str(doc["digest"])), 1)
        return [drained, vips, tables]

    def _service(self, f: _Families, svc: ServiceConfig, disabled: set[str]) -> None:
        d = self.daemon
        observed = d.observed.get(svc.key)
        dests = {x.key: x for x in observed.dests} if observed is not None else {}
        panic = in_panic(d, svc.name)
        plain = self.labels.plain
        f.panic.add(plain(("service",), svc.name), int(panic))
        facts: list[tuple[bool, bool, bool]] = []
        prober = d.prober
        for key, name, labels, target in self.labels.servers(svc, d.targets):
            health = prober.health(target) if target is not None else None
            up = health is not None and health.state == "up"
            off = name in disabled if disabled else False
            present = key in dests
            facts.append((up, present, off))
            f.up.add(labels, int(up))
            f.in_kernel.add(labels, int(present))
            f.disabled.add(labels, int(off))
            if health is not None and target is not None:
                f.transitions.add(labels, health.transitions)
                counters = prober.counters(target)
                f.failures.add(labels, counters.failures)
                f.inconclusive.add(labels, counters.inconclusive)
        state = service_state(bool(dests), panic, facts)
        for name in SERVICE_STATES:
            f.state.add(plain(("service", "state"), svc.name, name), int(name == state))
        if observed is not None:
            self._backends(f, svc.name, observed)

    def _backends(self, f: _Families, name: str, observed: Service) -> None:
        shares: dict[DestKey, float] = {}
        if observed.scheduler == "mh" and self.daemon.kernel is not None:
            shares = self.slots.shares(observed, model.parameters(self.daemon))
        s = observed.stats
        f.svc_conns.add(self.labels.service(name, observed.key), s.conns)
        for direction, packets, octets in (
            ("in", s.in_packets, s.in_bytes),
            ("out", s.out_packets, s.out_bytes),
        ):
            labels = self.labels.service(name, observed.key, direction)
            f.svc_packets.add(labels, packets)
            f.svc_bytes.add(labels, octets)
        for dest in observed.dests:
            labels = self.labels.backend(name, observed.key, dest.key)
            f.active.add(labels, dest.stats.active_conns)
            f.inactive.add(labels, dest.stats.inactive_conns)
            f.weight.add(labels, dest.weight)
            share = shares.get(dest.key)
            if share is not None:
                f.share.add(self.labels.server(name, dest.key), share)


class _Families:
    """The per-service and per-server families of one scrape."""

    def __init__(self) -> None:
        s, b, v = SERVER_LABELS, BACKEND_LABELS, SERVICE_LABELS
        self.up = Family("mhd_server_up", "gauge", "1 if the server's health is up", s)
        self.in_kernel = Family("mhd_server_in_kernel", "gauge", "1 if the server is in IPVS", s)
        self.disabled = Family("mhd_server_disabled", "gauge", "1 if an operator disabled it", s)
        self.transitions = Family("mhd_server_transitions", "counter", "Health transitions of the server", s)
        self.failures = Family("mhd_check_failures", "counter", "Failed health probes of the server", s)
        self.inconclusive = Family(
            "mhd_check_inconclusive",
            "counter",
            "Probes of the server not counted as failures: timed out while mhd's event loop stalled, or a fault of the director's own (out of fds, memory, buffers, source address)",
            s,
        )
        self.share = Family(
            "mhd_server_slot_share", "gauge", "Share of the Maglev table the server holds (model)", s
        )
        self.panic = Family(
            "mhd_service_panic", "gauge", "1 if the min-healthy guard keeps unhealthy servers", ("service",)
        )
        self.state = Family(
            "mhd_service_state", "gauge", "1 for the service's current state", ("service", "state")
        )
        self.svc_conns = Family("mhd_ipvs_connections", "counter", "Connections (kernel)", v)
        self.svc_packets = Family("mhd_ipvs_packets", "counter", "Packets (kernel)", (*v, "direction"))
        self.svc_bytes = Family("mhd_ipvs_bytes", "counter", "Bytes (kernel)", (*v, "direction"))
        self.active = Family("mhd_ipvs_backend_connections_active", "gauge", "Active connections (kernel)", b)
        self.inactive = Family(
            "mhd_ipvs_backend_connections_inactive", "gauge", "Inactive connections (kernel)", b
        )
        self.weight = Family("mhd_ipvs_backend_weight", "gauge", "Weight in IPVS", b)

    def all(self) -> list[Family]:
        families = [
            self.up, self.in_kernel, self.disabled, self.transitions, self.failures, self.inconclusive,
            self.panic, self.state,
            self.svc_conns, self.svc_packets, self.svc_bytes, self.active, self.inactive, self.weight,
        ]  # fmt: skip
        if self.share.rows:
            families.append(self.share)
        return families


class Metrics:
    """The metrics of one daemon: the scrape-time collector plus the accumulated probe metrics.

    `install()` hooks into the daemon, `uninstall()` unhooks (the API's closer calls it).
    """

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=False)  # the accumulated metrics only
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
        self._by_type: dict[str, tuple[Any, Any]] = {}
        self.collector = DaemonCollector(daemon, self)
        self.last_reconcile = time.monotonic()
        self.last_reconcile_wall = time.time()

    def install(self) -> None:
        self.daemon.probe_hooks.append(self.on_probe)
        self.daemon.hooks.append(self.on_reconcile)

    def uninstall(self) -> None:
        if self.on_probe in self.daemon.probe_hooks:
            self.daemon.probe_hooks.remove(self.on_probe)
        if self.on_reconcile in self.daemon.hooks:
            self.daemon.hooks.remove(self.on_reconcile)
        self.collector.slots.close()

    def on_probe(self, key: tuple[CheckSpec, str, int, str], due: float, lag: float, result: CheckResult) -> None:
        """Called for every probe (thousands a second): the labelled children are looked up once."""
        kind = key[0].type
        children = self._by_type.get(kind)
        if children is None:
            children = self._by_type[kind] = (
                self.check_duration.labels(kind),
                self.probe_failures.labels(kind),
            )
        children[0].observe(result.latency)
        self.check_lag.observe(lag if lag > 0 else 0.0)
        if not result.ok:
            children[1].inc()

    def on_reconcile(self) -> None:
        self.last_reconcile = time.monotonic()
        self.last_reconcile_wall = time.time()

    def render(self) -> bytes:
        """The /metrics body: prometheus_client's exposition of the accumulated metrics, then ours."""
        return generate_latest(self.registry) + render_families(self.collector.families()).encode()
