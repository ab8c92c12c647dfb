"""The dashboard's screenshots: one PNG per page in docs/img/ (``dashboard-NAME.png``),
taken by Debian's Chromium on the browser tests' seeded log (seed_app.py).

    scripts/screenshots [--out docs/img] [--width 1280] [--height 800]

Not part of a test run: the tests write nothing into docs/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from devservers.chromium import chromium
from devservers.dashboard import page_paths, run_dashboard
from devservers.debian import debian_program
from tests.dashboard.browser.seed_app import CORRELATION, ROOT, seed

TIMEOUT_MS = 120_000


def first_dead_letter(url: str, group: str) -> str:
    """The id of ``group``'s first dead letter, as ``tidings dlq list --json`` gives it."""
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "dlq", "list", group, "--json", "--url", url],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return str(json.loads(done.stdout)[0]["entry"])


def take(out: Path, width: int, height: int) -> list[Path]:
    """Seed a log in a temporary folder, serve it, and save each page; return the files."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="tidings-screenshots-") as folder:
        url = f"sqlite:///{folder}/log.db"
        seed(url)
        paths = page_paths(group="mail", topic="notes", entry=first_dead_letter(url, "mail"),
                           correlation=CORRELATION)  # fmt: skip
        executable = debian_program("chromium", "chromium")
        with (
            run_dashboard(url, Path(folder) / "dashboard.log", counted=True) as running,
            chromium(executable) as browser,
        ):
            page = browser.new_page(viewport={"width": width, "height": height})
            for name, path in paths.items():
                page.goto(running.base + path, wait_until="load", timeout=TIMEOUT_MS)
                file = out / f"dashboard-{name}.png"
                page.screenshot(path=str(file), full_page=True, timeout=TIMEOUT_MS)
                written.append(file)
                print(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/screenshots")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args(argv)
    take(args.out.resolve(), args.width, args.height)


if __name__ == "__main__":
    main()
