"""A real Prometheus server (Debian's ``prometheus`` package) scrapes a ``tidings run
--metrics-port`` worker, answers a PromQL query for its lag, and evaluates
docs/operations/alerts.yml on it.

The binary is taken from PATH; else, as root with apt-get, installed; else the test is
skipped saying why (failed, where ``CI=true``). Everything listens on 127.0.0.1, and
Prometheus keeps its storage in the test's directory and is stopped by its PID.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from devservers._process import free_ports
from tests.debian import APT_TIMEOUT, debian_binary
from tests.metrics.processes import RunningWorker, get, publish, write_app
from tidings.testing import eventually


def prometheus_binary(name: str = "prometheus") -> str:
    """A binary of Debian's prometheus package (``prometheus``, or ``promtool``),
    installed with apt-get if need be and possible."""
    return debian_binary(name, "prometheus")


def api(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return json.loads(get(url))["data"]


ALERTS = Path(__file__).resolve().parents[2] / "docs" / "operations" / "alerts.yml"


def start_prometheus(binary: str, tmp_path: Path, target: str) -> tuple[Any, int]:
    """Prometheus on 127.0.0.1 (its port returned), scraping ``target`` every second
    and evaluating docs/operations/alerts.yml every second, its storage and log in
    ``tmp_path``."""
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - '{ALERTS}'\n"
        "scrape_configs:\n  - job_name: tidings\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    (web,) = free_ports(1)  # below the ephemeral range: nothing dials out from it
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
            cwd=tmp_path, stdout=log, stderr=log,
        )  # fmt: skip
    return proc, web


@pytest.mark.timeout(APT_TIMEOUT * 2 + 300)
async def test_prometheus_scrapes_a_worker_answers_its_lag_and_evaluates_the_alerts(
    tmp_path: Path,
) -> None:
    binary = prometheus_binary()
    url = write_app(tmp_path)
    publish(tmp_path, url, range(5))
    worker = RunningWorker(tmp_path, "--metrics-port", "0")
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        target = f"127.0.0.1:{worker.port()}"
        prometheus, web = start_prometheus(binary, tmp_path, target)

        def target_up() -> bool:
            assert prometheus is not None
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                targets = api(web, "targets")["activeTargets"]
            except OSError:
                return False  # not listening yet
            return any(t["scrapeUrl"].startswith(f"http://{target}") and t["health"] == "up"
                       for t in targets)  # fmt: skip

        await eventually(target_up, timeout=120, interval=0.5, what="the worker scraped, up")
        answer: list[Any] = []

        def lag_answered() -> bool:
            query = 'sum(tidings_consumer_lag_messages{group="g", topic="t"})'
            answer[:] = api(web, "query", query=query)["result"]
            return bool(answer) and float(answer[0]["value"][1]) == 5

        await eventually(lag_answered, timeout=120, interval=0.5, what="PromQL lag of 5")
        assert float(answer[0]["value"][1]) == 5

        # docs/operations.md's rules, on this worker: every handler call fails and
        # none finishes, so TidingsHandlerFailures goes pending (firing takes 10m).
        def failures_alert() -> bool:
            alerts = api(web, "alerts")["alerts"]
            return any(a["labels"]["alertname"] == "TidingsHandlerFailures" for a in alerts)

        await eventually(failures_alert, timeout=120, interval=0.5, what="the failures alert")
        rules = [r for g in api(web, "rules")["groups"] for r in g["rules"]]
        written = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
        assert {r["name"] for r in rules} == {r["alert"] for r in written}
        assert all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules
        ]
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=60)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        worker.stop()
