"""etc/prometheus/mhd-rules.yml and etc/grafana/mhd.json: valid, tested, and only over real metrics.

Every metric name in every alert and panel expression must appear in a real scrape of mhd's
/metrics (built the way tests/test_metrics.py builds it), so a renamed metric breaks this test
instead of a dashboard in production. `FUTURE` lists the names the files use ahead of mhd exporting
them; once mhd exports one, this test says to take it off the list.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fakes import FakeDaemon, key
from prometheus_client.parser import text_string_to_metric_families

from mhd.api.metrics import Metrics
from mhd.health import CheckResult
from mhd.model import Stats
from mhd.probing.prober import check_key

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "etc" / "prometheus" / "mhd-rules.yml"
RULE_TESTS = sorted((ROOT / "tests" / "prometheus").glob("*.test.yml"))
DASHBOARD = ROOT / "etc" / "grafana" / "mhd.json"
FUTURE: dict[str, str] = {}  # name -> what it will be, for metrics the files use before mhd exports them

CONFIG = """
api: {listen: '', socket: ''}
defaults:
  check: {type: tcp, interval: 2s, timeout: 1s}
services:
  - {name: web, address: 203.0.113.15, port: 80, servers: ["10.0.0.1:80", "10.0.0.2:80"]}
  - {name: dns, address: 203.0.113.53, port: 53, protocol: udp, servers: ["10.0.1.1:53", "10.0.1.2:53"]}
"""

PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
FUNCTION_OR_AGGREGATION = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\s*\(")


def scraped_names(tmp_path: Path) -> set[str]:
    """Every sample name a daemon with services, traffic, probes and Maglev shares exports."""
    daemon = FakeDaemon(
        tmp_path, CONFIG, down={("dns", "10.0.1.2:53")}, stats={"10.0.0.1:80": Stats(conns=5)}
    )
    daemon.op_counts = {"add-dest": 4}
    metrics = Metrics(daemon)
    metrics.install()
    target = daemon.targets[("web", key("10.0.0.1:80"))]
    for hook in daemon.probe_hooks:
        hook(check_key(target), 0.0, 0.001, CheckResult(False, 0.002, "refused", time.time()))
    metrics.collector.slots.wait()
    metrics.render()  # the first scrape queues the Maglev tables; the next one has the shares
    metrics.collector.slots.wait()
    names = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    metrics.uninstall()
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, label names or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges: [5m], [$__rate_interval]
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = FUNCTION_OR_AGGREGATION.sub("(", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    words = re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text)
    return {w for w in words if w.lower() not in PROMQL_WORDS}


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(
                (f"${var['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["definition"]))
            )
    return exprs


def test_metric_names_are_extracted_from_promql() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, check) (rate(mhd_check_duration_seconds_bucket{instance=~"$x"}[5m]))) > 0.25 and on (instance) up'
    assert metric_names(expr) == {"mhd_check_duration_seconds_bucket", "up"}
    assert metric_names('time() - mhd_last_reconcile_timestamp_seconds{a="b c"} > 120') == {
        "mhd_last_reconcile_timestamp_seconds"
    }


def test_every_expression_uses_metrics_mhd_exports(tmp_path: Path) -> None:
    exported = scraped_names(tmp_path)
    assert "mhd_server_slot_share" in exported and "mhd_check_duration_seconds_bucket" in exported
    used: dict[str, set[str]] = {}
    for where, expr in rule_exprs() + dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            used.setdefault(name, set()).add(where)
    unknown = {n: sorted(w) for n, w in used.items() if n not in exported and n not in FUTURE}
    assert not unknown, f"metrics that mhd does not export: {unknown}"
    arrived = [n for n in FUTURE if n in exported]
    assert not arrived, f"mhd exports {arrived} now: take them off FUTURE in this test"
    core = {
        "mhd_service_state",
        "mhd_server_up",
        "mhd_ipvs_backend_connections_active",
        "mhd_check_lag_seconds_bucket",
    }
    assert core <= set(used), "the dashboard lost a core panel"


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 30
    assert doc["uid"] and doc["title"] and "id" not in doc  # importable into any Grafana
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "instance", "service"} <= variables
    for p in doc["panels"]:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"]), p["title"]
        for expr in (t["expr"] for t in p["targets"]):
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_rules_have_severity_and_summary() -> None:
    doc = yaml.safe_load(RULES.read_text())
    alerts = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in alerts} >= {
        "MhdServiceDown",
        "MhdServicePanic",
        "MhdServerDown",
        "MhdCheckLag",
        "MhdReloadFailing",
        "MhdReconcileStale",
        "MhdDirectorsDisagree",
    }
    for r in alerts:
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"], r["alert"]
    tested = "\n".join(path.read_text() for path in RULE_TESTS)
    for r in alerts:
        assert f"alertname: {r['alert']}\n" in tested, f"{r['alert']} has no promtool unit test"


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    tests = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
