"""The README's first command runs `taskapi demo`: it fans task events out to five
groups on the embedded log and ends with every group caught up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_fans_out_to_five_groups_and_catches_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "taskapi", "demo", "--data", str(tmp_path), "--tasks", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for group in ("email", "slack", "push", "audit", "reminders"):
        assert f"{group:<10} lag 0" in out
    assert out.count("[audit    ]") == 4  # every event: 2 created + 2 completed
    assert out.count("[push     ]") == 2  # created only
    assert (tmp_path / "tidings.db").exists()


def test_the_taskapi_command_explains_its_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskapi"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "usage: taskapi demo" in result.stderr
