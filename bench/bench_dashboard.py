"""How fast the dashboard renders its pages on a big log (issue 23): 100 topics, 50
groups with lag and 100,000 dead letters (bench/_dashboard_log.py), target 300 ms a page.

    .venv/bin/python -m bench.bench_dashboard [--requests 30] [--dead 100000] [--no-browser]
                                              [--first-only | --lists-only] [--keep FILE]

Starts ``tidings dashboard`` on the log as a real process on 127.0.0.1 and asks each
page ``--requests`` times (or for ``--seconds``) over HTTP, one request at a time:
the server's time per page as the client sees it (median and p90), and the server
process's CPU per request from /proc (steadier on a busy machine than wall time). The
baseline, in the same run, is the static CSS file of the same server.
The dead-letter list is asked on its first page and on a page deep in the queue: it must
page, not load the 50,000 entries of the deepest group. Then, unless ``--no-browser``,
Debian's Chromium loads each page and reports its first contentful paint and load end.

Before those, two kinds of first asks, each on a fresh start of the server (one process
per page): each page asked first thing (``--first-only``: only these, and the next),
and each dead-letter list (default, a late page, filtered by type, error type and time)
asked once the reading at start is over: its first full render, which lists the
deepest queue once (``--lists-only``: only these).

Prints one JSON line per figure, then a table (stderr: progress). The log lives in a
temporary folder (``--dir``), removed at the end, unless ``--keep FILE`` names a file
to write it into once and reuse on later runs (writing it takes about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import Deadline, Figure, log, median, percentile, summary_table
from bench._dashboard_log import Shape, fill
from devservers.dashboard import COUNTING, page_paths, run_dashboard, wait_counted
from tidings import Tidings
from tidings.dead_letters import open_log

TARGET_MS = 300.0
READING = b"reading..."  # what the catalog says until the dashboard has read its scan
MIN_ASKS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pages(shape: Shape, entry: str) -> dict[str, str]:
    """Each page measured, by name: the deepest group's, the first topic's, and the
    dead-letter list deep in its pages and filtered."""
    paths = page_paths(group=shape.group(0), topic=shape.topic(0), entry=entry,
                       correlation="req-1")  # fmt: skip
    deep = shape.dead_of(0) // 50 // 2  # half way into the deepest queue
    listing = paths["dead-letters"]
    return {
        **paths,
        f"dead-letters page {deep}": f"{listing}?page={deep}",
        "dead-letters filtered": f"{listing}?type=task.created",
    }


def list_pages(shape: Shape) -> dict[str, str]:
    """The deepest group's dead-letter list, by name: as it opens, a late page, and
    filtered by type, error type and time (since a date every entry is after)."""
    listing = f"/groups/{shape.group(0)}/dead-letters"
    deep = max(shape.dead_of(0) // 50 - 10, 1)  # near its last page
    return {
        "dead-letters": listing,
        f"dead-letters page {deep}": f"{listing}?page={deep}",
        "dead-letters by type": f"{listing}?type=task.created",
        "dead-letters by error type": f"{listing}?error_type=TimeoutError",
        "dead-letters since": f"{listing}?since=2000-01-01T00:00:00Z",
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def ask(base: str, path: str) -> tuple[float, int]:
    """One GET: seconds to the whole body, and the status."""
    took, status, _ = fetch(base, path)
    return took, status


def fetch(base: str, path: str) -> tuple[float, int, bytes]:
    """One GET: seconds to the whole body, the status and the body."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(base + path, timeout=120) as answer:
            body = answer.read()
            status = answer.status
    except urllib.error.HTTPError as refused:
        body = refused.read()
        status = refused.code
    return time.perf_counter() - started, status, body


def quiet(pid: int, bound_s: float = 300.0) -> None:
    """Wait until the server uses under 5 % of a CPU over a second: done with what it
    reads in the background (at most ``bound_s``)."""
    bound = Deadline(bound_s)
    while not bound.over():
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.05:
            return
    log(f"the server still busy after {bound_s:.0f} s")


def measure(base: str, pid: int, name: str, path: str, n: int, seconds: float) -> dict[str, Any]:
    """Ask ``path`` once (what the server caches fills; if it says "counting...", again
    until it does not), then ``n`` times, or for ``seconds`` if that comes first (at
    least :data:`MIN_ASKS` times)."""
    started = time.perf_counter()
    first, status, body = fetch(base, path)
    counted = None
    if COUNTING in body:  # the dead letters read at start: until all figures are there
        wait_counted(base, path)
        counted = time.perf_counter() - started
    if counted is not None:
        log(f"{name}: first ask said counting...; figures all there after {counted:.1f} s")
    quiet(pid)  # what the server reads in the background is not counted as this page's
    times: list[float] = []
    cpu_before = cpu_seconds(pid)
    bound = Deadline(seconds)
    while len(times) < n and (len(times) < MIN_ASKS or not bound.over()):
        took, status = ask(base, path)
        times.append(took)
    cpu = (cpu_seconds(pid) - cpu_before) / len(times)
    times.sort()
    log(f"{name}: median {median(times) * 1000:.0f} ms over {len(times)}, status {status}")
    return {
        "status": status, "asks": len(times), "first_ms": first * 1000,
        "first_counting": counted is not None,
        "counted_ms": None if counted is None else counted * 1000,
        "median_ms": median(times) * 1000, "p90_ms": percentile(times, 90) * 1000,
        "max_ms": times[-1] * 1000, "cpu_ms": cpu * 1000,
    }  # fmt: skip


def first_asks(url: str, paths: dict[str, str], folder: Path) -> list[Figure]:
    """Each page asked first thing after a fresh start of the server (one process per
    page): the time to its whole body, the server's CPU for it, and whether it said
    "counting..." or "reading..." (what the server reads in the background at start)."""
    figures = []
    for name, path in paths.items():
        with run_dashboard(url, folder / "first.log") as (base, pid):
            cpu_before = cpu_seconds(pid)
            took, status, body = fetch(base, path)
            cpu = cpu_seconds(pid) - cpu_before
        waits = [w.decode() for w in (COUNTING, READING) if w in body]
        log(f"{name} first after start: {took * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU with "
            f"the background's), status {status}, {waits or 'every figure'}")  # fmt: skip
        figures.append(
            Figure(f"dashboard {name}: first ask after start", took * 1000, "ms",
                   target=("value", "<=", TARGET_MS),
                   detail={"path": path, "status": status, "cpu_ms": cpu * 1000,
                           "says": waits})
        )  # fmt: skip
    return figures


def first_full_lists(url: str, paths: dict[str, str], folder: Path) -> list[Figure]:
    """Each dead-letter list asked first once the reading at start is over (one server
    process per page, asked when its pages no longer say "reading..." and it is idle):
    the server's CPU for it, the figure held to the target, and the time to its body."""
    figures = []
    for name, path in paths.items():
        with run_dashboard(url, folder / "lists.log", counted=True) as (base, pid):
            quiet(pid)
            cpu_before = cpu_seconds(pid)
            took, status, body = fetch(base, path)
            cpu = cpu_seconds(pid) - cpu_before
        rows = body.count(b"<tr data-entry=")
        log(f"{name} first full render: {cpu * 1000:.0f} ms CPU, {took * 1000:.0f} ms wall, "
            f"status {status}, {rows} rows")  # fmt: skip
        figures.append(
            Figure(f"dashboard {name}: first full render after the reading at start, server "
                   "CPU", cpu * 1000, "ms", target=("value", "<=", TARGET_MS),
                   detail={"path": path, "status": status, "wall_ms": took * 1000,
                           "rows": rows, "reading": READING in body})
        )  # fmt: skip
    return figures


PAINT = """() => new Promise(resolve => {
  const seen = () => performance.getEntriesByName("first-contentful-paint")[0];
  new PerformanceObserver(() => { if (seen()) resolve(seen().startTime); })
    .observe({type: "paint", buffered: true});
  setTimeout(() => resolve(seen() ? seen().startTime : NaN), 10000);
})"""
LOADED = "() => performance.getEntriesByType('navigation')[0].loadEventEnd"


def browser_times(base: str, paths: dict[str, str], loads: int) -> dict[str, tuple[float, float]]:
    """Each page in Debian's Chromium: the median first contentful paint and load end
    (ms from the navigation's start)."""
    from devservers.chromium import chromium
    from devservers.debian import debian_program

    times: dict[str, tuple[float, float]] = {}
    with chromium(debian_program("chromium", "chromium")) as browser:
        for name, path in paths.items():
            paints, loaded = [], []
            for _ in range(loads):
                page = browser.new_page()  # a new page: its own first paint
                page.goto(base + path, wait_until="load", timeout=120_000)
                paints.append(page.evaluate(PAINT))
                loaded.append(page.evaluate(LOADED))
                page.close()
            times[name] = (median(paints), median(loaded))
            paint, loaded_at = times[name]
            log(f"{name}: first contentful paint {paint:.0f} ms, loaded {loaded_at:.0f} ms")
    return times


async def prepare(url: str, shape: Shape, *, write: bool = True) -> str:
    """Fill the log (unless ``write`` is false: it is already there); return the id of
    one dead letter of the deepest group."""
    app = Tidings(url, service="bench")
    async with app:
        if write:
            seconds = await fill(app.transport, shape)
            log(f"wrote the log in {seconds:.0f} s")
            # The delayed events' table, as a worker's relay makes it: the overview
            # shows its backlog (and answered 400 without it, a dashboard bug when
            # measured).
            scheduler = app.scheduler
            assert scheduler is not None
            await scheduler.outbox.create_table_async()
        dead = await open_log(app.transport, shape.group(0))
        return next(iter(dead.entries))


def main(args: argparse.Namespace) -> None:
    shape = Shape(topics=args.topics, groups=args.groups, dead=args.dead)
    kept = Path(args.keep).resolve() if args.keep else None
    folder = Path(tempfile.mkdtemp(prefix="tidings-bench-dashboard-", dir=args.dir))
    figures: list[Figure] = []
    try:
        database = kept if kept is not None else folder / "dashboard.db"
        reuse = database.exists()
        if reuse:
            log(f"reusing the log {database} (written by an earlier --keep run)")
        url = f"sqlite:///{database}"
        entry = asyncio.run(prepare(url, shape, write=not reuse))
        paths = pages(shape, entry)
        if not args.lists_only:
            figures += first_asks(url, paths, folder)
        figures += first_full_lists(url, list_pages(shape), folder)
        if not (args.first_only or args.lists_only):
            with run_dashboard(url, folder / "dashboard.log") as (base, pid):
                # The overview asked first thing after start, as an operator opening it does.
                took, status, body = fetch(base, "/")
                counting = COUNTING in body
                log(
                    f"overview at start: {took * 1000:.0f} ms, status {status}, counting {counting}"
                )
                figures.append(
                    Figure("dashboard overview at start: server time", took * 1000, "ms",
                           detail={"status": status, "counting": counting})
                )  # fmt: skip
                floor = measure(base, pid, "static file", args.static, args.requests, args.seconds)
                for name, path in paths.items():
                    got = measure(base, pid, name, path, args.requests, args.seconds)
                    figures.append(
                        Figure(
                            f"dashboard {name}: server time, median", got["median_ms"], "ms",
                            baseline=floor["median_ms"], baseline_name="the static CSS file",
                            target=("value", "<=", TARGET_MS), detail={"path": path, **got},
                        )
                    )  # fmt: skip
                if not args.no_browser:
                    for name, (paint, loaded) in browser_times(base, paths, args.loads).items():
                        figures.append(Figure(f"dashboard {name}: first paint", paint, "ms"))
                        figures.append(Figure(f"dashboard {name}: loaded", loaded, "ms"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    detail = {"topics": shape.topics, "groups": shape.groups, "dead": shape.dead,
              "requests": args.requests, "loadavg": os.getloadavg()}  # fmt: skip
    print(json.dumps({"bench": "dashboard", **detail}))
    for figure in figures:
        print(figure.as_json())
    print(summary_table(figures), file=sys.stderr)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dashboard")
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--dead", type=int, default=100_000, help="dead letters in all")
    parser.add_argument("--requests", type=int, default=30, help="asks of each page")
    parser.add_argument("--seconds", type=float, default=60.0, help="bound on a page's asks")
    parser.add_argument("--loads", type=int, default=5, help="browser loads of each page")
    parser.add_argument("--static", default="/static/dashboard.css", help="the baseline")
    parser.add_argument("--no-browser", action="store_true", help="skip the first paints")
    parser.add_argument("--first-only", action="store_true",
                        help="only each page's first ask after a fresh start, and each "
                        "dead-letter list's first full render")  # fmt: skip
    parser.add_argument("--lists-only", action="store_true",
                        help="only each dead-letter list's first full render after the "
                        "reading at start")  # fmt: skip
    parser.add_argument("--dir", default=None, help="where the temporary folder goes")
    parser.add_argument(
        "--keep", default=None, metavar="FILE",
        help="the log's SQLite file, kept after the run: written if missing, else reused "
        "as it is (it must have been written with the same --topics/--groups/--dead)",
    )  # fmt: skip
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse())
