"""scripts/_venv.sh: the demo installs only what it runs (the ``taskapi`` extra), the
test command everything (``dev``), in one shared .venv, each only when needed.

Run against a stand-in ``.venv/bin/python`` that records what pip was asked to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$PIP_LOG"
if [ -n "${PIP_FAILS:-}" ]; then exit 1; fi
"""
PIP_UPGRADE = "-m pip install --quiet --upgrade pip"


def test_the_dev_extra_holds_everything_the_taskapi_and_docs_extras_do() -> None:
    """A demo after a test run installs nothing: dev must hold what the demo runs; and
    the test command builds the documentation site, with the docs extra's packages."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(extras["taskapi"]) <= set(extras["dev"])
    assert set(extras["agents"]) <= set(extras["dev"])  # scripts/agents-demo
    assert set(extras["docs"]) <= set(extras["dev"])


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The scripts and pyproject.toml of a clone, with a .venv whose python is fake."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_venv.sh", tmp_path / "scripts" / "_venv.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def source(clone: Path, *args: str, fails: bool = False) -> subprocess.CompletedProcess[str]:
    """``source scripts/_venv.sh ARGS`` in ``clone``, as scripts/demo and scripts/test do
    (a statement of its own: in an ``&&`` list, bash would ignore its ``set -e``)."""
    env = {**os.environ, "PYTHON": sys.executable, "PIP_LOG": str(clone / "pip.log")}
    if fails:
        env["PIP_FAILS"] = "1"
    return subprocess.run(
        ["bash", "-c", 'source scripts/_venv.sh "$@"; echo "sourced: $PATH"', "bash", *args],
        cwd=clone, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def installs(clone: Path, *args: str) -> list[str]:
    """What pip was asked to install by sourcing with ``args`` (the log is then emptied)."""
    result = source(clone, *args)
    assert result.returncode == 0, result.stderr
    assert f"sourced: {clone}/.venv/bin:" in result.stdout
    log = clone / "pip.log"
    asked = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return asked


def test_the_demo_installs_its_extra_once_and_a_test_run_then_installs_dev(clone: Path) -> None:
    assert installs(clone, "taskapi") == [PIP_UPGRADE, "-m pip install --quiet -e .[taskapi]"]
    assert installs(clone, "taskapi") == []
    assert installs(clone, "dev") == [PIP_UPGRADE, "-m pip install --quiet -e .[dev]"]
    assert installs(clone, "dev") == []
    assert installs(clone, "taskapi") == []  # dev holds it


def test_a_demo_after_a_test_run_installs_nothing(clone: Path) -> None:
    assert installs(clone, "dev") == [PIP_UPGRADE, "-m pip install --quiet -e .[dev]"]
    assert installs(clone, "taskapi") == []
    assert installs(clone, "agents") == []  # scripts/agents-demo after a test run


def test_a_changed_pyproject_installs_each_extra_again(clone: Path) -> None:
    installs(clone, "dev")
    with (clone / "pyproject.toml").open("a") as f:
        f.write("\n# a change\n")
    assert installs(clone, "taskapi") == [PIP_UPGRADE, "-m pip install --quiet -e .[taskapi]"]
    assert installs(clone, "dev") == [PIP_UPGRADE, "-m pip install --quiet -e .[dev]"]
    stamps = sorted(p.name for p in (clone / ".venv").glob(".installed-*"))
    assert [s.rsplit("-", 1)[0] for s in stamps] == [".installed-dev", ".installed-taskapi"]
    assert len({s.rsplit("-", 1)[1] for s in stamps}) == 1, "the old pyproject's are gone"


def test_the_stamp_of_an_earlier_dev_install_still_counts(clone: Path) -> None:
    installs(clone, "dev")
    for stamp in (clone / ".venv").glob(".installed-dev-*"):
        stamp.rename(stamp.with_name(stamp.name.replace("-dev", "")))  # as it was named
    assert installs(clone, "taskapi") == []
    assert installs(clone, "dev") == []


def test_a_failed_install_leaves_no_stamp_and_is_tried_again(clone: Path) -> None:
    failed = source(clone, "taskapi", fails=True)
    assert failed.returncode != 0
    assert "sourced:" not in failed.stdout
    assert list((clone / ".venv").glob(".installed-*")) == []
    (clone / "pip.log").unlink()
    assert installs(clone, "taskapi") == [PIP_UPGRADE, "-m pip install --quiet -e .[taskapi]"]


def test_sourcing_without_an_extra_says_which_to_name(clone: Path) -> None:
    result = source(clone)
    assert result.returncode != 0
    assert "usage: source scripts/_venv.sh EXTRA (taskapi, agents or dev)" in result.stderr
    assert not (clone / "pip.log").exists()


def test_the_test_command_builds_the_docs_strictly_and_not_quietly() -> None:
    """mkdocs 1.6's --quiet drops warnings before --strict counts them: a broken link
    would pass unseen."""
    builds = [line for line in (ROOT / "scripts" / "test").read_text().splitlines()
              if "mkdocs build" in line and not line.startswith("#")]  # fmt: skip
    assert len(builds) == 1
    assert "--strict" in builds[0].split()
    assert not {"-q", "--quiet"} & set(builds[0].split())
