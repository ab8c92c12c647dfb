"""``taskapi demo``: the whole reference system on the embedded log, with local sinks.

It starts the sinks (SMTP to a folder, a webhook receiver), the Task API with its
outbox relay, the six services and the task board (a projection), each its own
process; seeds a few tasks through the API; prints where to look; then prints every
effect as it happens until Ctrl-C, which stops everything cleanly. ``--exit-when-done``
stops once the seeded tasks' effects are all in and every group has caught up (for CI
and for the curious), prints the task board, then erases one assignee and shows one of
their task events before and after, and the audit chain still intact.

Personal data is encrypted (decision 0036): the key store is ``<data>/keys.db``, its
master key the file ``<data>/master.key`` (a demo's convenience: keep a real one apart
from the data it protects).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from taskapi.audit_verify import verify_main
from taskapi.effects import Effect, Effects
from taskapi.events import TOPIC, register
from taskapi.services import SERVICES
from taskapi.system import StartFailed, System
from tidings import Event, Tidings, decode
from tidings.shredding import ERASED, Shredder, SqlKeyStore

__all__ = ["main", "seed"]

DEVICES = {"alice": "device-alice-7f3a", "bob": "device-bob-19c2", "carol": "device-carol-88d1"}


def seed(api: str, lead: float) -> list[tuple[str, str, int]]:
    """Create, change, complete and delete a few tasks; return (what, correlation id,
    events caused) per request."""
    now = datetime.now(UTC)
    done: list[tuple[str, str, int]] = []
    with httpx.Client(base_url=api, timeout=30) as http:

        def call(what: str, method: str, path: str, events: int, body: Any = None) -> Any:
            response = http.request(method, path, json=body)
            response.raise_for_status()
            done.append((what, response.headers["x-correlation-id"], events))
            return response.json() if response.content else None

        report = call(
            "create 'Write the quarterly report' for alice, reminder in ~20 s",
            "POST",
            "/tasks",
            1,
            {
                "title": "Write the quarterly report",
                "assignee": "alice",
                "priority": "high",
                "due": (now + timedelta(seconds=lead + 20)).isoformat(),
            },
        )
        review = call(
            "create 'Review pull request #42' for bob",
            "POST",
            "/tasks",
            1,
            {
                "title": "Review pull request #42",
                "assignee": "bob",
                "due": (now + timedelta(days=1)).isoformat(),
            },
        )
        lunch = call(
            "create 'Order team lunch'", "POST", "/tasks", 1, {"title": "Order team lunch"}
        )
        call(
            "assign 'Order team lunch' to carol",
            "PATCH",
            f"/tasks/{lunch['id']}",
            2,
            {"assignee": "carol"},
        )
        call("complete 'Review pull request #42'", "POST", f"/tasks/{review['id']}/complete", 1)
        idea = call("create 'Old idea'", "POST", "/tasks", 1, {"title": "Old idea"})
        call("delete 'Old idea'", "DELETE", f"/tasks/{idea['id']}", 1)
        del report
    return done


async def _ensure_log(url: str) -> None:
    # Create the log and the topic once, before several processes open it at once.
    async with register(Tidings(url, service="taskapi-demo")):
        pass


async def _group_lags(url: str) -> dict[str, int]:
    async with Tidings(url, service="taskapi-demo") as app:
        return {g.group: g.lag for g in await app.transport.groups() if g.group in SERVICES}


def _print_effect(effect: Effect) -> None:
    at = datetime.fromtimestamp(effect.at, UTC).strftime("%H:%M:%S.%f")[:-3]
    corr = (effect.correlation_id or "-")[-12:]
    print(f"  {at}  {effect.service:<9} {effect.summary}  [correlation …{corr}]", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskapi demo", description=__doc__)
    parser.add_argument("--data", default="taskapi-data", help="the data folder (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="the API's port (%(default)s)")
    parser.add_argument("--smtp-port", type=int, default=8025, help="SMTP sink (%(default)s)")
    parser.add_argument("--http-port", type=int, default=8026, help="webhooks (%(default)s)")
    parser.add_argument(
        "--dashboard-port", type=int, default=8080, help="the tidings dashboard (%(default)s)"
    )
    parser.add_argument(
        "--lead", type=float, default=60.0, help="seconds a reminder fires before the due date"
    )
    parser.add_argument(
        "--exit-when-done", action="store_true", help="stop once every seeded effect is in"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="for --exit-when-done")
    args = parser.parse_args(argv)

    data = Path(args.data).absolute()
    data.mkdir(parents=True, exist_ok=True)
    devices = data / "devices.json"
    if not devices.exists():
        devices.write_text(json.dumps(DEVICES, indent=2) + "\n")
    system = System(
        data,
        api_port=args.port,
        smtp_port=args.smtp_port,
        http_port=args.http_port,
        env={"TASKAPI_REMINDER_LEAD": str(args.lead), **_keys_env(data)},
    )
    settings = system.settings.ensure()
    asyncio.run(_ensure_log(settings.tidings_url))
    # Ctrl-C (and SIGTERM) end the loop below; the parts, in sessions of their own, are
    # then stopped in order by stop_all(). Set explicitly: a shell may start a
    # background job with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print(f"starting the Task API system in {data} ...", flush=True)
        system.start_all()
        system.start_dashboard(args.dashboard_port)
        requests = seed(system.api_url, args.lead)
        _where(system, requests)
        return _follow(system, requests, args.exit_when_done, args.timeout)
    except StartFailed as exc:
        print(f"taskapi demo: {exc}")
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        codes = system.stop_all()
        stuck = {name: code for name, code in codes.items() if code not in (0, None)}
        print("stopped" + (f"; exit codes {stuck}" if stuck else " cleanly"), flush=True)


def _where(system: System, requests: list[tuple[str, str, int]]) -> None:
    s = system.settings
    rel = Path(s.data.name)
    print(f"\nseeded through the API ({len(requests)} requests):")
    for what, correlation, _ in requests:
        print(f"  {what:<66} correlation {correlation}")
    print(
        f"""
where to look:
  dashboard      {system.dashboard_url}   (groups, lag, dead letters, traces)
  API docs       {system.api_url}/docs
  mail folder    {rel}/mail/          (one .eml per mail; index.jsonl lists them)
  webhook log    {rel}/webhooks.jsonl  (what Slack and the push gateway received)
  audit files    {rel}/audit/         (check: taskapi audit verify --data {rel})
  reminders      taskapi reminders --data {rel}
  task board     {system.api_url}/board   (rebuild it: taskapi board rebuild --data {rel})
  groups         tidings groups --url {s.tidings_url}
  dead letters   tidings dlq list slack --url {s.tidings_url}
  process logs   {rel}/logs/

try:  curl -s -X POST {system.api_url}/tasks -H 'content-type: application/json' \\
        -d '{{"title": "Try tidings", "assignee": "alice"}}'

effects as they happen (Ctrl-C stops everything):""",
        flush=True,
    )


def _print_board(api: str) -> None:
    """The task board, as GET /board serves it (the task-board projection)."""
    board = httpx.get(f"{api}/board", timeout=30).json()
    print(f"\ntask board (GET /board, {board['total']} tasks):")
    for row in board["counts"]:
        print(f"  {row['assignee'] or '(nobody)':<10} {row['status']:<10} {row['tasks']}")


def _follow(
    system: System, requests: list[tuple[str, str, int]], exit_when_done: bool, timeout: float
) -> int:
    effects = Effects(system.settings)
    expected_events = sum(n for _, _, n in requests)
    deadline = time.monotonic() + timeout
    while True:
        for effect in effects.poll():
            _print_effect(effect)
        dead = [p.name for p in system.parts.values() if not p.running]
        if dead:
            print(f"taskapi demo: {', '.join(dead)} stopped unexpectedly; see {system.data}/logs/")
            return 1
        if exit_when_done and len(effects.of("audit")) >= expected_events:
            lags = asyncio.run(_group_lags(system.settings.tidings_url))
            if len(lags) == len(SERVICES) and not any(lags.values()):
                print("\nevery group has caught up:")
                for group in SERVICES:
                    print(f"  {group:<10} lag {lags[group]}  effects {len(effects.of(group))}")
                _print_board(system.api_url)
                return _show_erasure(system, "carol")
        if exit_when_done and time.monotonic() > deadline:
            print(f"taskapi demo: the effects were not all in after {timeout:.0f}s")
            return 1
        time.sleep(0.2)


def _keys_env(data: Path) -> dict[str, str]:
    """The environment that turns encryption on: a key store and its master key's file
    (made once, 0600) in the data folder."""
    key_file = data / "master.key"
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    return {
        "TASKAPI_KEYS": f"sqlite:///{data / 'keys.db'}",
        "TIDINGS_MASTER_KEY_FILE": str(key_file),
    }


def _show_erasure(system: System, person: str) -> int:
    """Print ``person``'s first task.assigned event as a holder of the key store reads
    it, erase ``person`` (``DELETE /people/{id}``), print it again, verify the audit."""
    settings = system.settings
    assert settings.keys is not None
    master = Path(system.env["TIDINGS_MASTER_KEY_FILE"]).read_bytes()

    def read() -> dict[str, Any]:
        store = SqlKeyStore(str(settings.keys), master_key=master)  # a reader's own cache
        try:
            event = asyncio.run(_assigned_to(settings.tidings_url, Shredder(store), person))
        finally:
            store.close()
        return {"id": event.id, "type": event.type, "data": event.data}

    print(f"\n{person}'s task event, as a holder of the key store reads it (tail --reveal):")
    print("  " + json.dumps(read()["data"]))
    response = httpx.delete(f"{system.api_url}/people/{person}", timeout=30)
    print(f"\nDELETE /people/{person}: {response.status_code} (their key is deleted)")
    if response.status_code != 204:
        return 1
    print("the same event now:")
    print("  " + json.dumps(read()["data"]))
    print("\nthe audit trail (taskapi audit verify):")
    return verify_main(["--data", str(system.data)])


async def _assigned_to(url: str, keys: Shredder, person: str) -> Event:
    """The first task.assigned event of the log whose assignee, opened with ``keys``,
    is ``person`` (before an erasure) or reads as erased (after it)."""
    app = Tidings(url, service="taskapi-demo")
    async with app:
        (info,) = [t for t in await app.transport.topics() if t.name == TOPIC]
        for p in info.partitions:
            for record in await app.transport.read(TOPIC, p.partition, p.start, 10_000):
                event = decode(record.value)
                if event.type != "task.assigned":
                    continue
                event = event.with_(data=keys.open(event.id, event.data))
                if event.data.get("assignee") in (person, ERASED):
                    return event
    raise LookupError(f"no task.assigned event for {person} in {url}")
