"""``tidings dashboard`` serves the pages on 127.0.0.1, and says where."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from tests.dashboard.conftest import Seeded
from tests.test_cli import assert_one_error_line, tidings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_command_serves_the_dashboard_and_prints_its_address(seeded: Seeded) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    command = [sys.executable, "-m", "tidings", "dashboard", "--url", seeded.url,
               "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    try:
        first = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/groups/mail", timeout=30)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                assert process.poll() is None, "the dashboard stopped"
                time.sleep(0.2)
        assert page.status_code == 200
        assert 'data-group="mail"' in page.text
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def test_the_command_refuses_a_log_that_does_not_exist(tmp_path: object) -> None:
    result = tidings("dashboard", "--port", "0", url=f"sqlite:///{tmp_path}/missing.db")
    assert result.returncode != 0
    assert "missing.db" in result.stderr


def test_the_command_takes_a_port_only(seeded: Seeded) -> None:
    assert_one_error_line(tidings("dashboard", "--port", "http", url=seeded.url), 2, "port")


def test_the_command_refuses_an_app_it_cannot_import(seeded: Seeded) -> None:
    result = tidings("dashboard", "--port", "0", "--app", "no_such_module_x:app", url=seeded.url)
    assert_one_error_line(result, 2, "cannot import 'no_such_module_x'")
