"""docs/operations.md's alert rules and Grafana dashboard: the rules pass ``promtool
check rules`` and fire as ``promtool test rules`` expects (alerts_test.yml), and every
metric either uses is one a real worker exposes (``METRICS``, with the sample names
prometheus-client gives them)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.metrics.test_metrics import make_app, publish, run_until
from tests.metrics.test_prometheus_scrape import prometheus_binary
from tidings import Worker
from tidings.metrics import METRICS, WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "operations" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "operations" / "grafana-dashboard.json"
PAGE = ROOT / "docs" / "operations.md"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")

# Series that are Prometheus's own, not a worker's: `up` (a target scraped or not).
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def sample_names() -> set[str]:
    """Every sample name a metric of ``METRICS`` is exposed as: a histogram's
    ``_bucket``, ``_sum`` and ``_count``; a counter's and a gauge's own name."""
    names: set[str] = set()
    for name, (kind, _, _) in METRICS.items():
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: its identifiers, without label
    matchers, grouping clauses, range selectors, strings, functions and keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = match.group(), expr[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function's call, a keyword
        found.add(word)
    return found


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (group, le) (rate(x_bucket{group=~"$group"}'
        "[$__rate_interval]))) > 5 and on (group) y_total offset 5m"
    )
    assert metric_names(expr) == {"x_bucket", "y_total"}
    assert metric_names('up{job="tidings"} == 0') == {"up"}


async def test_the_suffix_rules_are_what_a_worker_exposes(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    worker = Worker(app, commit_interval=0.01)
    metrics = WorkerMetrics(worker, cache_seconds=0)
    async with app:
        await publish(app, range(2))
        await run_until(worker, seen, 2)
        text = (await metrics.exposition()).decode()
    exposed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert exposed <= sample_names()
    histogram = "messaging_process_duration_seconds"
    assert {histogram + "_bucket", histogram + "_sum", histogram + "_count"} <= exposed
    assert "tidings_events_consumed_total" in exposed


def test_promtool_checks_the_alert_rules(tmp_path: Path) -> None:
    promtool = prometheus_binary("promtool")
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_sees_the_alerts_fire_on_series_of_a_stopped_group(tmp_path: Path) -> None:
    """``promtool test rules`` (tests/metrics/alerts_test.yml): a stopped group pages
    after its lag has been over 300 s for 5 minutes, a group keeping up does not;
    dead letters and a stuck outbox fire, an outbox relayed in bursts does not."""
    promtool = prometheus_binary("promtool")
    done = subprocess.run(
        [promtool, "test", "rules", str(ALERTS_TEST)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_reads_metrics_a_worker_exposes() -> None:
    known = sample_names() | PROMETHEUS_OWN
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, (rule["alert"], used - known)
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_the_dashboard_parses_and_its_panels_read_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["group"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    known = sample_names()
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metric_names(target["expr"])
            assert used, (panel["title"], target["expr"])
            assert used <= known, (panel["title"], used - known)
    everything = set().union(*(metric_names(e) for e in dashboard_exprs()))
    histogram = "messaging_process_duration_seconds_bucket"
    assert {"tidings_consumer_lag_seconds", "tidings_consumer_lag_messages", histogram,
            "tidings_dead_letters", "tidings_outbox_backlog"} <= everything  # fmt: skip


def test_the_page_shows_the_rules_file_and_names_every_rule() -> None:
    """The page includes the rules file itself (a snippet), names each rule, and the
    PromQL it quotes is the rules' own (no copy that could drift)."""
    page = PAGE.read_text()
    assert '--8<-- "docs/operations/alerts.yml"' in page
    prose = re.sub(r"```.*?```", "", page.split("## The alert rules")[0], flags=re.S)
    named = set(re.findall(r"\*\*(Tidings\w+)\*\*", prose)) | set(
        re.findall(r"`(Tidings\w+)`", prose)
    )
    assert named == {rule["alert"] for rule in rules()}
    quoted = [code for code in re.findall(r"`([^`]+)`", prose)
              if "(" in code and metric_names(code) & sample_names()]  # fmt: skip
    assert quoted, "the page quotes the p99's PromQL"
    for code in quoted:
        assert any(code in rule["expr"] for rule in rules()), code
