"""The reference system end to end: real processes (the API, its relay, six services,
an SMTP sink and a webhook receiver), real sockets, real files.

One system runs for the module; each test uses its own tasks and correlation ids.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskapi.effects import Effect, Effects
from taskapi.events import PARTITIONS
from taskapi.system import System

pytestmark = pytest.mark.integration

LEAD = 2.0  # seconds a reminder fires before the due date
ATTEMPTS = 3  # slack's calls of a failing webhook before its dead letter


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data = tmp_path_factory.mktemp("taskapi")
    (data / "devices.json").write_text(json.dumps({"alice": "dev-alice", "bob": "dev-bob"}))
    env = {
        "TASKAPI_REMINDER_LEAD": str(LEAD),
        "TASKAPI_RETRY_ATTEMPTS": str(ATTEMPTS),
        "TASKAPI_RETRY_DELAY": "0.05",
        "TASKAPI_RETRY_MAX_DELAY": "0.2",
    }
    env = {**{k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}, **env}
    system = System(data, env=env)
    try:
        system.start_all()
        yield system
    finally:
        codes = system.stop_all()
    assert codes == dict.fromkeys(codes, 0), f"exit codes {codes}; logs in {data / 'logs'}"


@pytest.fixture
def api(system: System) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.api_url, timeout=30) as client:
        yield client


@pytest.fixture
def effects(system: System) -> Effects:
    return Effects(system.settings)


def wait(effects: Effects, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        effects.poll()
        if check():
            return
        if time.monotonic() > deadline:
            seen = [(e.service, e.summary, e.correlation_id) for e in effects.seen]
            raise AssertionError(f"{what}: not seen after {timeout}s; effects: {seen}")
        time.sleep(0.05)


def request(api: httpx.Client, method: str, path: str, correlation: str, body: Any = None) -> Any:
    response = api.request(method, path, json=body, headers={"X-Correlation-ID": correlation})
    assert response.is_success, response.text
    assert response.headers["x-correlation-id"] == correlation
    return response.json() if response.content else None


def tidings(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args, "--url", system.settings.tidings_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def no_duplicates(effects: Effects) -> None:
    done = Counter((e.service, e.event_id) for e in effects.seen if e.ok)
    assert [key for key, n in done.items() if n > 1] == []


def test_a_task_lifecycle_reaches_every_service_under_one_correlation_id(
    system: System, api: httpx.Client, effects: Effects
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=LEAD + 3)
    task = request(
        api, "POST", "/tasks", "life-create",
        {"title": "Quarterly report", "assignee": "alice", "due": due.isoformat()},
    )  # fmt: skip
    assert task["status"] == "open"

    def of(service: str, correlation: str) -> list[Effect]:
        return effects.of(service, correlation_id=correlation)

    wait(
        effects,
        lambda: all(of(s, "life-create") for s in ("email", "slack", "audit")),
        "the created task's mail, Slack post and audit line",
    )
    (mail,) = of("email", "life-create")
    assert mail.record["rcpt_tos"] == ["alice@example.com"]
    assert mail.record["subject"] == "New task: Quarterly report"
    (post,) = of("slack", "life-create")
    assert post.record["body"]["text"] == "New task for alice: Quarterly report"
    assert post.record["body"]["blocks"][0]["type"] == "section"
    assert of("push", "life-create") == []  # push reacts to assignment and reminders only

    # The reminder fires LEAD seconds before the due date, under the same correlation.
    wait(
        effects,
        lambda: len(of("email", "life-create")) == 2 and len(of("push", "life-create")) == 1,
        "the reminder's mail and push",
        timeout=LEAD + 15,
    )
    set_, fired = of("reminders", "life-create")
    assert set_.summary.startswith("reminder for 'Quarterly report' set for")
    assert fired.summary == "reminder due: 'Quarterly report'"
    remind_at = due.timestamp() - LEAD
    assert remind_at <= fired.at < remind_at + 1.5
    reminder_mail = of("email", "life-create")[1]
    assert reminder_mail.record["subject"].startswith("Reminder: Quarterly report is due")
    (push,) = of("push", "life-create")
    assert push.record["body"]["to"] == "dev-alice"
    assert push.record["body"]["data"]["task_id"] == task["id"]

    request(api, "PATCH", f"/tasks/{task['id']}", "life-assign", {"assignee": "bob"})
    request(api, "POST", f"/tasks/{task['id']}/complete", "life-complete")
    wait(
        effects,
        lambda: bool(of("push", "life-assign")) and bool(of("slack", "life-complete"))
        and len(of("email", "life-complete")) == 1,
        "the assignment's push and mail, the completion's post and mail",
    )  # fmt: skip
    assert [m.record["subject"] for m in of("email", "life-assign")] == [
        "Assigned to you: Quarterly report"
    ]
    assert of("push", "life-assign")[0].record["body"]["to"] == "dev-bob"
    assert of("email", "life-complete")[0].record["rcpt_tos"] == ["bob@example.com"]

    other = request(api, "POST", "/tasks", "life-delete", {"title": "Scratch"})
    request(api, "DELETE", f"/tasks/{other['id']}", "life-delete")
    types = ["task.created", "task.reminder_due", "task.updated", "task.assigned"]
    types += ["task.completed"]
    wait(
        effects,
        lambda: len(of("audit", "life-delete")) == 2 and len(effects.of("audit")) >= 7,
        "every event in the audit files",
    )
    audited = [
        e.record["event"] for e in effects.of("audit") if e.record["event"]["subject"] == task["id"]
    ]
    assert [e["type"] for e in audited] == types
    assert {e["correlationid"] for e in audited[:2]} == {"life-create"}
    assert [e["type"] for e in (x.record["event"] for x in of("audit", "life-delete"))] == [
        "task.created",
        "task.deleted",
    ]
    verify = subprocess.run(
        [sys.executable, "-m", "taskapi", "audit", "verify", "--data", str(system.data)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    no_duplicates(effects)


def test_a_stopped_slack_service_catches_up_without_sending_twice(
    system: System, api: httpx.Client, effects: Effects
) -> None:
    assert system.stop("slack") == 0
    ids = []
    for i in range(3):
        task = request(api, "POST", "/tasks", f"catchup-{i}", {"title": f"Catch up {i}"})
        request(api, "POST", f"/tasks/{task['id']}/complete", f"catchup-{i}")
        ids.append(task["id"])
    wait(
        effects,
        lambda: all(len(effects.of("audit", correlation_id=f"catchup-{i}")) == 2 for i in range(3)),
        "the other services handling the changes",
    )
    assert [e for e in effects.of("slack") if (e.correlation_id or "").startswith("catchup")] == []

    system.start_service("slack")
    wait(
        effects,
        lambda: all(len(effects.of("slack", correlation_id=f"catchup-{i}")) == 2 for i in range(3)),
        "Slack catching up",
    )
    time.sleep(1.0)  # anything sent twice would arrive by now
    effects.poll()
    posts = [e for e in effects.of("slack") if (e.correlation_id or "").startswith("catchup")]
    assert len(posts) == 6
    no_duplicates(effects)


def test_a_failing_slack_webhook_is_retried_then_dead_lettered_while_others_carry_on(
    system: System, api: httpx.Client, effects: Effects
) -> None:
    control = httpx.post(
        f"{system.receiver_url}/_control/fail",
        json={"path": "/slack", "status": 500, "times": None},
        timeout=10,
    )
    assert control.is_success, control.text
    try:
        request(api, "POST", "/tasks", "failing-slack", {"title": "Ship", "assignee": "bob"})

        def attempts() -> list[Effect]:
            return [
                e for e in effects.seen
                if e.service == "slack" and e.correlation_id == "failing-slack"
            ]  # fmt: skip

        wait(
            effects,
            lambda: (
                len(attempts()) == ATTEMPTS
                and bool(effects.of("email", correlation_id="failing-slack"))
                and bool(effects.of("audit", correlation_id="failing-slack"))
            ),
            "three failed Slack attempts, the mail and the audit line",
        )
        assert [e.ok for e in attempts()] == [False] * ATTEMPTS
        deadline = time.monotonic() + 20
        while True:
            listed = tidings(system, "dlq", "list", "slack", "--json")
            assert listed.returncode == 0, listed.stderr
            entries = json.loads(listed.stdout)
            if entries or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        (entry,) = entries
        created = effects.of("audit", correlation_id="failing-slack")[0]
        assert entry["event_id"] == created.event_id
        assert entry["type"] == "task.created"
        assert entry["error_type"] == "taskapi.services.webhook.WebhookFailed"
        assert "answered 500" in entry["error_message"]
        time.sleep(0.5)
        effects.poll()
        assert len(attempts()) == ATTEMPTS  # no more calls after the dead letter
    finally:
        httpx.delete(
            f"{system.receiver_url}/_control/fail", params={"path": "/slack"}, timeout=10
        ).raise_for_status()

    # The partition was not held up: the next task's post goes through, and a replay
    # of the dead letter posts the first one.
    request(api, "POST", "/tasks", "after-failure", {"title": "Next"})
    wait(effects, lambda: bool(effects.of("slack", correlation_id="after-failure")), "next post")
    replay = tidings(system, "dlq", "replay", "slack")
    assert replay.returncode == 0, replay.stderr
    wait(
        effects,
        lambda: bool(effects.of("slack", correlation_id="failing-slack")),
        "the replayed post",
    )
    no_duplicates(effects)


def test_a_killed_email_service_loses_no_mail_and_repeats_at_most_its_in_flight_ones(
    system: System, api: httpx.Client, effects: Effects
) -> None:
    for i in range(40):
        request(api, "POST", "/tasks", f"crash-{i}", {"title": f"Crash {i}", "assignee": "bob"})
        if i == 20:
            system.kill("email")  # SIGKILL: mails sent but not yet marked are sent again
    system.start_service("email")

    def mails() -> Counter[str]:
        return Counter(
            e.correlation_id or ""
            for e in effects.of("email")
            if (e.correlation_id or "").startswith("crash-")
        )

    wait(effects, lambda: len(mails()) == 40, "a mail for each of the 40 tasks")
    time.sleep(0.5)
    effects.poll()
    repeated = sum(n - 1 for n in mails().values())
    # At most one mail per partition was between its SMTP send and its inbox mark (a
    # partition's next event starts once the mark is committed). Runs here gave 4.
    assert repeated <= PARTITIONS, mails()


def test_tampering_with_an_audit_line_is_detected(
    system: System, api: httpx.Client, effects: Effects, tmp_path: Path
) -> None:
    # Its own audit lines: with two test processes, the module's other tests may have
    # run in the other one, against a system of its own.
    for title in ("Audited", "Audited too"):
        task = request(api, "POST", "/tasks", "tamper", {"title": title, "assignee": "bob"})
    request(api, "POST", f"/tasks/{task['id']}/complete", "tamper")
    wait(
        effects,
        lambda: len(effects.of("audit", correlation_id="tamper")) == 3,
        "two created tasks' audit lines and a completed one's",
    )
    copy = tmp_path / "audit"
    shutil.copytree(system.settings.audit_dir, copy)
    (path,) = sorted(copy.glob("audit-*.jsonl"))[-1:]
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    lines[1] = lines[1].replace(b"task.", b"tusk.", 1)
    path.write_bytes(b"".join(lines))
    settings = system.settings  # the key and the log of the checkpoints
    verify = subprocess.run(
        [sys.executable, "-m", "taskapi", "audit", "verify", str(copy),
         "--key-file", str(settings.audit_key_file), "--url", settings.tidings_url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 1
    assert f"{path.name} line 2: line 2 was changed: its MAC does not match" in verify.stdout
