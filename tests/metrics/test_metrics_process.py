"""``tidings run --metrics-port``: a worker process serving its metrics; and without
the extra, a clear error and nothing of it loaded."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.metrics.processes import RunningWorker, get, publish, write_app
from tidings.testing import eventually


def lag_of(text: str, group: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tidings_consumer_lag_messages" and s.labels["group"] == group
    )


async def test_tidings_run_serves_metrics_on_its_port(tmp_path: Path) -> None:
    url = write_app(tmp_path)
    publish(tmp_path, url, range(5))
    worker = RunningWorker(tmp_path, "--metrics-port", "0")
    try:
        port = worker.port()
        text = ""

        def retrying() -> bool:
            nonlocal text
            text = get(f"http://127.0.0.1:{port}/metrics")
            families = {f.name: f for f in text_string_to_metric_families(text)}
            return families["tidings_retries"].samples[0].value > 0 and lag_of(text, "g") == 5

        # (The lag is read at most once a second: the first scrapes may predate the join.)
        await eventually(retrying, timeout=60, interval=0.2, what="lag 5 and a retry scraped")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["tidings_events_consumed"].samples[0].value == 0
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.seen)


HIDDEN = """\
import sys
sys.modules["prometheus_client"] = None  # as if the metrics extra were not installed
import tidings, tidings.cli, tidings.worker, tidings.admin
assert not any(m.startswith(("prometheus_client", "tidings.metrics")) for m in sys.modules
               if sys.modules[m] is not None), "loaded without being asked for"
sys.exit(tidings.cli.main(["run", "metrics_app:app", "--metrics-port", "0"]))
"""


def test_without_the_extra_metrics_port_says_what_to_install(tmp_path: Path) -> None:
    write_app(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", HIDDEN], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'tidings[metrics]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_metrics_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    write_app(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tidings", "run", "metrics_app:app", "--metrics-port",
             str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
