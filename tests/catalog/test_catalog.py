"""The event catalog (tidings.catalog) on a real SQLite log: two services recorded in
the schema registry, events published by a handler so that causation exists, a
deprecated version still consumed; the catalog as data, text, JSON and a static site
that the W3C's Nu Html Checker accepts and whose every link resolves."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest

from tests.catalog.html_check import broken_links, validate
from tests.catalog.system import System, TaskCreated, TaskCreatedV1, build
from tests.conftest import log_url
from tidings import Tidings
from tidings.catalog import Flow, build_catalog, catalog_json, render_text, write_html
from tidings.catalog.html import event_file, service_file
from tidings.catalog.model import Catalog
from tidings.catalog.text import sla_text
from tidings.schema.registry import SchemaRegistry
from tidings.schema.services import describe
from tidings.testing import SteppedClock, eventually, running
from tidings.transports import open_transport


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


async def run_system(url: str) -> System:
    """Start both services, publish two v2 and one v1 task.created, and wait until the
    reminders group answered each (each answer caused by its task.created)."""
    system = build(url)
    async with system.tasks, system.reminders, running(system.reminders):
        await system.tasks.publish("task-events", TaskCreated(task_id="t-1", title="one"))
        await system.tasks.publish("task-events", TaskCreatedV1(task_id="t-2", title="two"))
        await system.tasks.publish("task-events", TaskCreated(task_id="t-3", title="three"))
        await eventually(lambda: len(system.handled) == 3 and len(system.audited) == 3)
    return system


async def catalog_of(url: str, **options: object) -> Catalog:
    transport = open_transport(url)
    await transport.start()
    try:
        return await build_catalog(transport, **options)  # type: ignore[arg-type]
    finally:
        await transport.close()


async def test_the_catalog_holds_each_type_with_its_producers_consumers_and_versions(
    url: str,
) -> None:
    await run_system(url)
    catalog = await catalog_of(url)  # from the log alone: no app given
    assert [e.type for e in catalog.events] == ["task.created", "task.reminder_due"]
    created = catalog.event("task.created")
    assert created is not None
    assert (created.kind, created.owner, created.subject) == ("event", "tasks", "task_id")
    assert (
        created.description
        == "A task was created.\n\nIts subject, the task id, is its partition key."
    )
    assert created.topics == ("task-events",)
    [producer] = created.producers
    assert (producer.service, producer.topic, producer.declared, producer.seen) == (
        "tasks", "task-events", True, 3,
    )  # fmt: skip
    assert producer.versions == (1, 2)
    consumers = {(c.service, c.group): c for c in created.consumers}
    assert set(consumers) == {("reminders", "audit"), ("reminders", "reminders")}
    assert consumers["reminders", "reminders"].reads == {1: 1, 2: 2}
    assert consumers["reminders", "reminders"].sla == 30
    assert consumers["reminders", "audit"].every_type
    assert consumers["reminders", "audit"].sla == 5.5
    v1, v2 = created.versions
    assert v1.deprecated
    assert v1.sunset == date(2000, 1, 1)
    assert not v2.deprecated
    assert v2.registered_by
    assert v2.registered_by.startswith("tasks@")
    assert v2.previous == 1
    assert [(c.path, c.rule.value) for c in v2.changes] == [
        ("data", "TITLE_CHANGED"),
        ("data", "DESCRIPTION_CHANGED"),
        ("data.due", "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"),
    ]
    assert v2.changes[-1].breaks == ()  # under the type's policy, LENIENT: compatible
    assert v2.example == {"task_id": "t-1", "title": 'Write <docs> & "tests"'}
    assert v2.example_from == "model"
    assert (v1.example, v1.example_from) == ({"task_id": "t-2", "title": "two"}, "log")
    due = catalog.event("task.reminder_due")
    assert due is not None
    assert due.owner == "reminders"
    assert due.consumers == ()
    assert [(p.service, p.topic, p.seen) for p in due.producers] == [
        ("reminders", "reminder-events", 3)
    ]


async def test_flows_come_from_the_causation_of_the_events_in_the_log(url: str) -> None:
    await run_system(url)
    catalog = await catalog_of(url)
    assert catalog.flows == (Flow("task.created", "task.reminder_due", 3),)
    assert catalog.scanned == {"task-events": 3, "reminder-events": 3}
    assert "  task.created -> task.reminder_due (3)" in render_text(catalog).splitlines()
    # The newest event of each topic only: t-3's task.created and, one partition handled
    # in order, the reminder it caused.
    bounded = await catalog_of(url, scan_limit=1)
    assert bounded.scanned == {"task-events": 1, "reminder-events": 1}
    assert bounded.flows == (Flow("task.created", "task.reminder_due", 1),)
    assert (await catalog_of(url, scan_limit=0)).flows == ()


async def test_a_deprecated_version_past_its_sunset_lists_who_still_uses_it(url: str) -> None:
    await run_system(url)
    catalog = await catalog_of(url)
    [old] = catalog.deprecations()
    assert (old.type, old.version, old.overdue(date(2026, 12, 7))) == ("task.created", 1, True)
    assert old.producers == ("tasks (task-events)",)
    assert old.consumers == (
        "reminders/audit (task-events)",
        "reminders/reminders (task-events)",
    )
    text = render_text(catalog)
    assert "task.created v1: deprecated; PAST ITS SUNSET 2000-01-01" in text
    assert "    still consumed by reminders/reminders (task-events)" in text


async def test_the_json_is_one_document_with_everything_the_text_shows(url: str) -> None:
    await run_system(url)
    doc = json.loads(json.dumps(catalog_json(await catalog_of(url))))
    created = doc["events"][0]
    assert created["type"] == "task.created"
    assert [v["version"] for v in created["versions"]] == [1, 2]
    assert created["versions"][1]["changes"][-1]["path"] == "data.due"
    assert {(c["group"], c["sla"]) for c in created["consumers"]} == {
        ("audit", 5.5), ("reminders", 30.0),
    }  # fmt: skip
    assert doc["flows"] == [{"cause": "task.created", "effect": "task.reminder_due", "count": 3}]
    assert doc["deprecations"][0]["past_sunset"] is True
    assert {s["service"] for s in doc["services"]} == {"tasks", "reminders"}


async def test_the_site_is_valid_html_and_every_link_resolves(
    url: str, tmp_path: Path, vnu_jar: Path
) -> None:
    await run_system(url)
    catalog = await catalog_of(url)
    site = tmp_path / "site"
    written = write_html(catalog, site)
    assert {p.relative_to(site).as_posix() for p in written} == {
        "index.html",
        event_file("task.created"),
        event_file("task.reminder_due"),
        service_file("tasks"),
        service_file("reminders"),
    }
    assert validate(vnu_jar, written) == []
    assert broken_links(site) == []
    page = (site / event_file("task.created")).read_text()
    assert "<svg" in page
    assert "<script" not in page
    assert "Write &lt;docs&gt; &amp; \\&quot;tests\\&quot;" in page  # escaped, in its JSON
    assert "<docs>" not in page
    index = (site / "index.html").read_text()
    assert 'href="events/task.created.html"' in index
    assert "PAST ITS SUNSET 2000-01-01" in index


async def test_the_checks_of_the_site_catch_what_they_are_for(
    tmp_path: Path, vnu_jar: Path
) -> None:
    """A test that cannot fail proves nothing: an invalid page and a dead link are
    reported."""
    bad = tmp_path / "bad"
    bad.mkdir()
    page = bad / "index.html"
    page.write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>'
        '<body><p><div>block in a paragraph</div></p><a href="events/nowhere.html">x</a>'
        '<a href="#missing">y</a><a href="../outside.html">z</a></body></html>'
    )
    (tmp_path / "outside.html").write_text("<!DOCTYPE html>")
    assert validate(vnu_jar, [page])
    assert broken_links(bad) == [
        "index.html: events/nowhere.html",
        "index.html: #missing",
        "index.html: ../outside.html",
    ]


async def test_an_app_given_shows_its_declarations_before_it_ever_started(url: str) -> None:
    """Nothing in the registry yet: the app's own contracts, publications and groups
    make the catalog (its schemas from its models)."""
    system = build(url)
    transport = open_transport(url)
    await transport.start()
    try:
        catalog = await build_catalog(transport, app=system.reminders)
    finally:
        await transport.close()
    created = catalog.event("task.created")
    assert created is not None
    assert created.owner == "tasks"
    assert [v.version for v in created.versions] == [1, 2]
    assert created.versions[1].schema == TaskCreated.model_json_schema()
    assert created.versions[1].registered_by is None
    assert {c.group for c in created.consumers} == {"audit", "reminders"}
    assert [r.service for r in catalog.services] == ["reminders"]
    assert catalog.services[0].host is None  # declared, not recorded


async def test_odd_service_names_make_safe_file_names_and_escaped_pages(
    tmp_path: Path, vnu_jar: Path
) -> None:
    """A service may be a URI, or hold characters HTML gives a meaning to."""
    names = ["/services/task-api", "a<b>&c", "..", "plain"]
    apps = []
    for name in names:
        app = Tidings(f"memory://odd-{tmp_path.name}", service=name)
        app.publishes("task-events", ["task.created"])
        app.subscriber("task-events", group="g")(lambda event: None)
        apps.append(app)
    transport = apps[0].transport
    await transport.start()
    try:
        for app in apps:
            await SchemaRegistry(transport).record_service(describe(app))
        catalog = await build_catalog(transport)
    finally:
        await transport.close()
    files = [service_file(n) for n in names]
    assert len(set(files)) == 4
    assert files[3] == "services/plain.html"
    assert all(re.fullmatch(r"services/[A-Za-z0-9_.-]+\.html", f) for f in files)
    assert not any(f.startswith("services/.") for f in files)
    site = tmp_path / "site"
    written = write_html(catalog, site)
    assert validate(vnu_jar, written) == []
    assert broken_links(site) == []
    assert "a&lt;b&gt;&amp;c" in (site / "index.html").read_text()


@pytest.fixture(
    params=[
        pytest.param("kafka", marks=pytest.mark.integration),
        pytest.param("nats", marks=pytest.mark.integration),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    return log_url(request, partitions=2)


async def test_the_catalog_reads_records_and_flows_on_a_broker_too(broker_url: str) -> None:
    """The records live in the registry topic and the scan reads through the transport
    protocol: the same catalog on Kafka (Tansu) and NATS JetStream."""
    await run_system(broker_url)
    catalog = await catalog_of(broker_url)
    assert [e.type for e in catalog.events] == ["task.created", "task.reminder_due"]
    assert catalog.flows == (Flow("task.created", "task.reminder_due", 3),)
    assert {r.service for r in catalog.services} == {"tasks", "reminders"}
    [old] = catalog.deprecations()
    assert old.consumers == ("reminders/audit (task-events)", "reminders/reminders (task-events)")


async def test_a_consumer_is_shown_against_its_sla_from_its_groups_lag(url: str) -> None:
    app = Tidings(url, service="shop")
    app.group("slow", sla=30)

    @app.subscriber("orders", group="slow", types=["order.placed"])
    async def handle(payload: dict[str, object]) -> None:
        pass

    clock = SteppedClock()
    async with app:
        app.transport.clock = clock
        await app.publish("orders", {"n": 0}, type="order.placed")
        async with running(app) as worker:
            await eventually(lambda: worker.stats.handled == 1, what="the first event")
        await app.publish_many("orders", [{"n": 1}, {"n": 2}], type="order.placed")
        (within,) = (await build_catalog(app.transport, app=app)).events[0].consumers
        clock.step_wall(60)  # the oldest unhandled event is a minute old
        (over,) = (await build_catalog(app.transport, app=app)).events[0].consumers
    assert (within.sla, within.over_sla) == (30, False)
    assert within.lag_seconds is not None
    assert within.lag_seconds < 30  # seconds old, at most, on a busy machine
    assert over.lag_seconds is not None
    assert over.lag_seconds >= 60
    assert over.over_sla
    assert sla_text(over).startswith("SLA 30s, OVER: lag ")
