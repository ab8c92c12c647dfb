"""Interoperability with the official CloudEvents SDK (``cloudevents`` 2.x).

Both of its APIs are checked: the new ``cloudevents.core`` (``JSONFormat``) and the
``cloudevents.v1`` HTTP API (``from_json`` / ``to_json``) that most existing code uses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1.conversion import to_json as v1_to_json
from cloudevents.v1.http import CloudEvent as HttpEvent
from cloudevents.v1.http import from_json as v1_from_json
from pydantic import BaseModel

from tidings.codec import decode, encode
from tidings.envelope import Event

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EXTENSIONS = ("correlationid", "causationid", "dataversion", "partitionkey", "traceparent")


class TaskAssigned(BaseModel):
    task_id: str
    assignee: str


def _tidings_event(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "task.assigned",
        "source": "taskapi",
        "data": TaskAssigned(task_id="t1", assignee="ada"),
        "time": datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC),
        "subject": "t1",
        "dataschema": "urn:tidings:schema:task.assigned:2",
        "dataversion": 2,
        "correlationid": "req-42",
        "causationid": "01890a5d-ac96-774b-bcce-b302099a8057",
        "traceparent": TRACEPARENT,
        "partitionkey": "tenant-7",
        "extensions": {"tenant": "acme"},
    }
    fields.update(changes)
    return Event(**fields)


# -- tidings -> SDK ----------------------------------------------------------------


def test_sdk_core_reads_a_tidings_event_with_every_attribute_and_extension() -> None:
    event = _tidings_event()
    ce = JSONFormat().read(None, encode(event))
    assert isinstance(ce, CoreEvent)
    assert ce.get_id() == event.id
    assert ce.get_source() == "taskapi"
    assert ce.get_type() == "task.assigned"
    assert ce.get_specversion() == "1.0"
    assert ce.get_time() == event.time
    assert ce.get_subject() == "t1"
    assert ce.get_datacontenttype() == "application/json"
    assert ce.get_dataschema() == "urn:tidings:schema:task.assigned:2"
    for name in EXTENSIONS:
        assert ce.get_extension(name) == getattr(event, name), name
    assert ce.get_extension("dataversion") == 2
    assert ce.get_extension("tenant") == "acme"
    assert ce.get_data() == {"task_id": "t1", "assignee": "ada"}


def test_sdk_v1_http_reads_a_tidings_event_with_every_attribute_and_extension() -> None:
    event = _tidings_event()
    ce = v1_from_json(encode(event))
    assert ce["id"] == event.id
    assert ce["source"] == "taskapi"
    assert ce["type"] == "task.assigned"
    assert ce["specversion"] == "1.0"
    assert datetime.fromisoformat(ce["time"]) == event.time
    assert ce["subject"] == "t1"
    assert ce["dataschema"] == event.dataschema
    for name in EXTENSIONS:
        assert ce[name] == getattr(event, name), name
    assert ce["tenant"] == "acme"
    assert ce.data == {"task_id": "t1", "assignee": "ada"}


def test_sdk_reads_binary_tidings_data_from_data_base64() -> None:
    event = _tidings_event(data=b"\x00\x01\xfe\xff", datacontenttype="application/octet-stream")
    ce = JSONFormat().read(None, encode(event))
    assert ce.get_data() == b"\x00\x01\xfe\xff"
    assert ce.get_datacontenttype() == "application/octet-stream"


def test_sdk_reads_a_tidings_time_with_an_offset_as_the_same_instant() -> None:
    tz = timezone(timedelta(hours=5, minutes=30))
    event = _tidings_event(time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=tz))
    assert JSONFormat().read(None, encode(event)).get_time() == event.time


def test_a_tidings_event_passes_through_the_sdk_unchanged() -> None:
    event = _tidings_event(data={"a": [1, 2, {"b": None}]})
    relayed = JSONFormat().write(JSONFormat().read(None, encode(event)))
    assert decode(relayed) == event


# -- SDK -> tidings ----------------------------------------------------------------


def test_tidings_reads_an_sdk_core_event_with_the_same_values() -> None:
    when = datetime(2024, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    ce = CoreEvent(
        {
            "id": "evt-1",
            "source": "https://example.com/billing",
            "type": "billing.invoice.paid",
            "time": when,
            "subject": "inv-9",
            "datacontenttype": "application/json",
            "dataschema": "https://example.com/schemas/invoice-paid/3",
            "correlationid": "req-7",
            "causationid": "evt-0",
            "dataversion": 3,
            "partitionkey": "customer-1",
            "traceparent": TRACEPARENT,
            "region": "eu",
        },
        {"invoice": "inv-9", "amount": 12.5},
    )
    event = decode(JSONFormat().write(ce))
    assert event.id == "evt-1"
    assert event.source == "https://example.com/billing"
    assert event.type == "billing.invoice.paid"
    assert event.specversion == "1.0"
    assert event.time == when
    assert event.subject == "inv-9"
    assert event.datacontenttype == "application/json"
    assert event.dataschema == "https://example.com/schemas/invoice-paid/3"
    assert event.correlationid == "req-7"
    assert event.causationid == "evt-0"
    assert event.dataversion == 3
    assert event.partitionkey == "customer-1"
    assert event.key == "customer-1"
    assert event.traceparent == TRACEPARENT
    assert event.extensions == {"region": "eu"}
    assert event.data == {"invoice": "inv-9", "amount": 12.5}


def test_tidings_reads_an_sdk_core_event_with_only_the_required_attributes() -> None:
    ce = CoreEvent({"source": "/x", "type": "task.created"})
    event = decode(JSONFormat().write(ce))
    assert event.id == ce.get_id()
    assert event.time == ce.get_time()
    assert event.data is None
    assert event.correlationid is None
    assert event.extensions == {}


def test_tidings_reads_binary_sdk_data() -> None:
    ce = CoreEvent(
        {"source": "/x", "type": "file.uploaded", "datacontenttype": "image/png"}, b"\x89PNG"
    )
    raw = JSONFormat().write(ce)
    assert "data_base64" in orjson.loads(raw)
    event = decode(raw)
    assert event.data == b"\x89PNG"
    assert event.datacontenttype == "image/png"


def test_tidings_reads_an_sdk_v1_http_event_whose_extensions_are_strings() -> None:
    ce = HttpEvent(
        {
            "type": "task.completed",
            "source": "/legacy",
            "subject": "t3",
            "correlationid": "req-1",
            "causationid": "evt-2",
            "dataversion": "4",
            "partitionkey": "p",
            "traceparent": TRACEPARENT,
        },
        {"task_id": "t3"},
    )
    event = decode(v1_to_json(ce))
    assert event.id == ce["id"]
    assert event.time == datetime.fromisoformat(ce["time"])
    assert event.subject == "t3"
    assert event.correlationid == "req-1"
    assert event.causationid == "evt-2"
    assert event.dataversion == 4
    assert event.partitionkey == "p"
    assert event.traceparent == TRACEPARENT
    assert event.data == {"task_id": "t3"}


@pytest.mark.parametrize("data", [{"k": "v"}, [1, 2], "text", 3, True])
def test_json_data_of_any_kind_crosses_both_ways(data: Any) -> None:
    ce = CoreEvent({"source": "/x", "type": "task.created"}, data)
    assert decode(JSONFormat().write(ce)).data == data
    assert JSONFormat().read(None, encode(_tidings_event(data=data))).get_data() == data
