"""/metrics: the collector reads the daemon at scrape time; the text parses with prometheus_client."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeDaemon, health, key, spy_imports
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mhd.api import model as maglev_model
from mhd.api.metrics import Metrics, render_families
from mhd.health import CheckResult
from mhd.model import Stats
from mhd.probing.prober import check_key

# A smaller world than test_api's: every service in the kernel, 10.0.0.1:80 with traffic.
CONFIG = """
api: {listen: '', socket: ''}
defaults:
  check: {type: tcp, interval: 2s, timeout: 1s}
services:
  - {name: web, address: 203.0.113.15, port: 80, servers: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]}
  - {name: dns, address: 203.0.113.53, port: 53, protocol: udp, servers: ["10.0.1.1:53", "10.0.1.2:53"]}
  - name: v6
    address: 2001:db8::80
    port: 443
    min-healthy: 2
    servers: ["[2001:db8:1::1]:443", {address: "2001:db8:1::2", port: 443, weight: 3}]
"""
DOWN = {("dns", "10.0.1.2:53"), ("v6", "[2001:db8:1::2]:443")}


STATS = {
    "10.0.0.1:80": Stats(active_conns=7, inactive_conns=3, conns=42, in_packets=10, out_packets=9, in_bytes=5)
}


def make_daemon(tmp_path: Path, text: str = CONFIG) -> FakeDaemon:
    return FakeDaemon(tmp_path, text, down=DOWN, stats=STATS)


def scrape(metrics: Metrics) -> dict[str, list[Any]]:
    """name -> samples, parsed back by prometheus_client's own parser."""
    text = metrics.render().decode()
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return float(found[0])


def test_server_and_service_gauges(tmp_path: Path) -> None:
    s = scrape(Metrics(make_daemon(tmp_path)))
    assert value(s, "mhd_server_up", service="web", remote_address="10.0.0.1", remote_port="80") == 1
    assert value(s, "mhd_server_up", service="dns", remote_address="10.0.1.2") == 0
    assert value(s, "mhd_server_in_kernel", service="dns", remote_address="10.0.1.2") == 0
    assert value(s, "mhd_server_in_kernel", service="v6", remote_address="2001:db8:1::2") == 1  # panic
    assert value(s, "mhd_service_panic", service="v6") == 1
    assert value(s, "mhd_service_panic", service="web") == 0
    assert value(s, "mhd_service_state", service="dns", state="degraded") == 1
    assert value(s, "mhd_service_state", service="dns", state="ok") == 0
    assert value(s, "mhd_build_info") == 1


def test_kernel_counters_use_node_exporter_labels(tmp_path: Path) -> None:
    s = scrape(Metrics(make_daemon(tmp_path)))
    labels = {
        "local_address": "203.0.113.15",
        "local_port": "80",
        "remote_address": "10.0.0.1",
        "remote_port": "80",
        "proto": "TCP",
        "service": "web",
    }
    assert value(s, "mhd_ipvs_backend_connections_active", **labels) == 7
    assert value(s, "mhd_ipvs_backend_connections_inactive", **labels) == 3
    web = {k: v for k, v in labels.items() if not k.startswith("remote")}
    assert value(s, "mhd_ipvs_connections_total", **web) == 0  # the service's own counters
    assert value(s, "mhd_ipvs_packets_total", direction="out", **web) == 0
    assert value(s, "mhd_ipvs_backend_weight", **labels) == 1
    assert value(s, "mhd_ipvs_backend_weight", remote_address="2001:db8:1::2") == 3
    assert value(s, "mhd_ipvs_backend_weight", service="dns", remote_address="10.0.1.1", proto="UDP") == 1
    assert not [x for x in s["mhd_ipvs_backend_weight"] if x.labels["remote_address"] == "10.0.1.2"]


def test_state_is_read_at_scrape_time(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    metrics = Metrics(d)
    d.set_health("web", "10.0.0.3:80", health("down", transitions=1))
    d.refresh()
    s = scrape(metrics)
    assert value(s, "mhd_server_up", service="web", remote_address="10.0.0.3") == 0
    assert value(s, "mhd_server_transitions_total", service="web", remote_address="10.0.0.3") == 1
    assert value(s, "mhd_service_state", service="web", state="degraded") == 1
    d.set_disabled("web", "10.0.0.3", True)
    assert value(scrape(metrics), "mhd_server_disabled", service="web", remote_address="10.0.0.3") == 1
    assert d.config is not None
    d.adopt(dataclasses.replace(d.config, services=d.config.services[:1]))  # web only
    s = scrape(metrics)
    assert {x.labels["service"] for x in s["mhd_server_up"]} == {"web"}


def test_probe_histograms_and_failures(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    metrics = Metrics(d)
    metrics.install()
    target = d.targets[("web", key("10.0.0.1:80"))]
    for i in range(4):
        result = CheckResult(i != 3, 0.003, "ok", time.time())
        for hook in d.probe_hooks:
            hook(check_key(target), 0.0, 0.0004, result)
    s = scrape(metrics)
    assert value(s, "mhd_check_duration_seconds_count", check="tcp") == 4
    assert value(s, "mhd_check_duration_seconds_bucket", check="tcp", le="0.005") == 4
    assert value(s, "mhd_check_duration_seconds_bucket", check="tcp", le="0.0025") == 0
    assert value(s, "mhd_check_lag_seconds_count") == 4
    assert value(s, "mhd_probe_failures_total", check="tcp") == 1
    metrics.uninstall()
    assert d.probe_hooks == [] and d.hooks == []


def test_per_server_probe_counters_come_from_the_prober(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    target = d.targets[("dns", key("10.0.1.2:53"))]
    counters = d.prober.counters(target)
    counters.probes, counters.failures, counters.inconclusive = 10, 4, 2
    s = scrape(Metrics(d))
    assert value(s, "mhd_check_failures_total", service="dns", remote_address="10.0.1.2") == 4
    assert value(s, "mhd_check_inconclusive_total", service="dns", remote_address="10.0.1.2") == 2


def test_daemon_counters_and_reloads(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    metrics = Metrics(d)
    metrics.install()
    d.reconciles, d.drift_repairs, d.transitions = 12, 2, 5
    d.op_counts = {"add-dest": 3, "delete-dest": 1}
    broken = tmp_path / "broken.yaml"
    broken.write_text("services: [{name: Bad}]\n")
    d.config_path = str(broken)
    assert not asyncio.run(d.reload()).ok  # the daemon's own reload path counts it
    for hook in d.hooks:
        hook()
    s = scrape(metrics)
    s = scrape(metrics)  # the same reload seen twice counts once
    assert value(s, "mhd_reconciles_total") == 12
    assert value(s, "mhd_drift_repairs_total") == 2
    assert value(s, "mhd_health_transitions_total") == 5
    assert value(s, "mhd_reconcile_operations_total", kind="add-dest") == 3
    assert value(s, "mhd_reloads_total", result="error") == 1
    assert value(s, "mhd_reloads_total", result="ok") == 0
    assert value(s, "mhd_config_last_reload_successful") == 0
    assert time.time() - value(s, "mhd_last_reconcile_timestamp_seconds") < 5


@pytest.mark.skipif(importlib.util.find_spec("mhd.maglev.predict") is None, reason="no Maglev model")
def test_slot_shares_from_the_maglev_model(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    d = make_daemon(tmp_path)
    metrics = Metrics(d)
    assert "mhd_server_slot_share" not in scrape(metrics)  # tables are built off the loop...
    metrics.collector.slots.wait()
    s = scrape(metrics)  # ...and exported from the next scrape
    web = [x.value for x in s["mhd_server_slot_share"] if x.labels["service"] == "web"]
    assert len(web) == 3 and math.isclose(sum(web), 1.0) and all(0.25 < x < 0.42 for x in web)
    v6 = {
        x.labels["remote_address"]: x.value for x in s["mhd_server_slot_share"] if x.labels["service"] == "v6"
    }
    assert v6["2001:db8:1::2"] > 2 * v6["2001:db8:1::1"]  # weight 3 against 1
    assert not [x for x in s["mhd_server_slot_share"] if x.labels["remote_address"] == "10.0.1.2"]
    started = time.perf_counter()
    scrape(metrics)  # cached: no table is rebuilt while the kernel's lists are unchanged
    assert time.perf_counter() - started < 0.5


def test_the_maglev_model_is_imported_off_the_scraping_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape runs on the daemon's loop: importing numpy there stalled every probe (seconds under TCG)."""
    seen = spy_imports(monkeypatch, maglev_model)
    monkeypatch.setattr(maglev_model, "_module", None)
    metrics = Metrics(make_daemon(tmp_path))
    scrape(metrics)
    metrics.collector.slots.wait()
    assert seen == [("mhd.maglev.predict", False)]


def test_fast_exposition_equals_prometheus_client(tmp_path: Path) -> None:
    """/metrics writes the collector's families itself; prometheus_client must read the same samples."""
    d = make_daemon(tmp_path)
    metrics = Metrics(d)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.collector)
    metrics.collector.families()
    metrics.collector.slots.wait()  # the same Maglev shares in both expositions
    reference = generate_latest(registry).decode()
    fast = render_families(metrics.collector.families())

    def parsed(text: str) -> list[tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
        return [
            (f.name, f.type, sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples))
            for f in text_string_to_metric_families(text)
        ]

    assert parsed(fast) == parsed(reference)
    assert len(parsed(fast)) > 20
