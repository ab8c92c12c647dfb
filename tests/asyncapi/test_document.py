"""``tidings.asyncapi``: the documents of taskapi's apps, on each transport, pass the
official ``@asyncapi/parser`` with no error; what a document says is checked here on
its content."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from taskapi import services
from taskapi.api import create_app
from taskapi.settings import Settings
from tests.asyncapi.conftest import Validate
from tidings import Tidings
from tidings.asyncapi import ANY_EVENT, document
from tidings.codec import encode
from tidings.codec.binary import event_to_kafka

SECRET = "s3cret-pw"
URLS = {
    "sqlite": None,  # taskapi's default: events.db in its data folder
    "kafka": f"kafka://taskapi:{SECRET}@127.0.0.1:9092,127.0.0.1:9093"
    "?security_protocol=SASL_PLAINTEXT&sasl_mechanism=SCRAM-SHA-512",
    "nats": f"nats://taskapi:{SECRET}@127.0.0.1:4222?partitions=4",
}


@contextlib.asynccontextmanager
async def taskapi_apps(data: Path, url: str | None) -> AsyncIterator[dict[str, Tidings]]:
    """The Tidings apps of taskapi's API and of its six services (not started)."""
    settings = Settings.from_env(data, env={"TIDINGS_URL": url} if url else {}).ensure()
    api = create_app(settings, relay=False).state
    try:
        async with contextlib.AsyncExitStack() as stack:
            built = {name: services.build(name, settings, stack) for name in services.SERVICES}
            yield {"api": api.tidings, **built}
    finally:
        api.engine.dispose()


async def taskapi_documents(data: Path, url: str | None) -> dict[str, dict[str, Any]]:
    async with taskapi_apps(data, url) as apps:
        return {name: document(app) for name, app in apps.items()}


def assert_valid(said: dict[str, Any]) -> None:
    for name, parsed in said.items():
        assert parsed.parsed, (name, parsed.diagnostics)
        assert parsed.errors == [], (name, parsed.errors)


@pytest.mark.parametrize("transport", sorted(URLS))
async def test_taskapi_documents_pass_the_official_parser(
    transport: str, tmp_path: Path, validate: Validate
) -> None:
    docs = await taskapi_documents(tmp_path / "data", URLS[transport])
    said = validate(docs)
    assert set(said) == {"api", *services.SERVICES}
    assert_valid(said)


@pytest.mark.parametrize("transport", ["kafka", "nats"])
async def test_servers_come_from_the_url_without_its_secrets(
    transport: str, tmp_path: Path
) -> None:
    docs = await taskapi_documents(tmp_path / "data", URLS[transport])
    for doc in docs.values():
        text = json.dumps(doc)
        assert SECRET not in text
        assert "taskapi:" not in text  # nor the user name of the URL's userinfo
    servers = docs["api"]["servers"]
    if transport == "kafka":
        assert {name: s["host"] for name, s in servers.items()} == {
            "kafka-1": "127.0.0.1:9092",
            "kafka-2": "127.0.0.1:9093",
        }
        assert {s["protocol"] for s in servers.values()} == {"kafka"}
        schemes = docs["api"]["components"]["securitySchemes"]
        assert schemes == {"sasl": {"type": "scramSha512", "description": "SASL SCRAM-SHA-512"}}
    else:
        assert servers == {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "A NATS server with JetStream",
                "security": [{"$ref": "#/components/securitySchemes/user-password"}],
            }
        }


async def test_the_embedded_log_is_a_sqlite_server_with_its_file(tmp_path: Path) -> None:
    docs = await taskapi_documents(tmp_path / "data", None)
    (server,) = docs["api"]["servers"].values()
    assert server["protocol"] == "sqlite"
    assert server["host"] == "localhost"
    assert server["pathname"] == str(tmp_path / "data" / "events.db")


async def test_operations_send_what_each_app_publishes_and_receive_per_group(
    tmp_path: Path,
) -> None:
    docs = await taskapi_documents(tmp_path / "data", URLS["kafka"])
    api, email = docs["api"]["operations"], docs["email"]["operations"]
    assert sorted(api) == [
        f"send.task-events.task.{t}"
        for t in ("assigned", "completed", "created", "deleted", "updated")
    ]
    assert api["send.task-events.task.created"]["messages"] == [
        {"$ref": "#/channels/task-events/messages/task.created.v1"},  # deprecated
        {"$ref": "#/channels/task-events/messages/task.created.v2"},  # deprecated
        {"$ref": "#/channels/task-events/messages/task.created.v3"},  # with its marks
    ]
    created = docs["api"]["components"]["messages"]
    assert (
        created["task.created.v1"]["deprecated"],
        created["task.created.v2"]["deprecated"],
        "deprecated" in created["task.created.v3"],
    ) == (
        True,
        True,
        False,
    )
    assert sorted(docs["reminders"]["operations"]) == [
        "receive.reminders.task-events",
        "send.task-events.task.reminder_due",
    ]
    (receive,) = email.values()
    assert receive["action"] == "receive"
    assert receive["channel"] == {"$ref": "#/channels/task-events"}
    assert [m["$ref"].rpartition("/")[2] for m in receive["messages"]] == [
        "task.assigned.v1",
        "task.assigned.v2",
        "task.completed.v1",
        "task.completed.v2",
        "task.created.v1",
        "task.created.v2",
        "task.created.v3",
        "task.escalated.v1",
        "task.escalation_failed.v1",
        "task.reminder_due.v1",
        "task.reminder_due.v2",
    ]
    assert receive["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": ["email"]}
    channel = docs["email"]["channels"]["task-events"]
    assert channel["address"] == "task-events"
    assert channel["bindings"] == {"kafka": {"partitions": 4, "bindingVersion": "0.5.0"}}


async def test_nats_channels_address_the_subjects_and_groups_are_queues(tmp_path: Path) -> None:
    docs = await taskapi_documents(tmp_path / "data", URLS["nats"])
    channel = docs["slack"]["channels"]["task-events"]
    assert channel["address"] == "task-events.{partition}.{type}"
    assert channel["parameters"]["partition"]["enum"] == ["0", "1", "2", "3"]
    assert channel["parameters"]["type"]["enum"] == [
        "task.completed", "task.created", "task.escalated", "task.escalation_failed",
    ]  # fmt: skip
    (receive,) = docs["slack"]["operations"].values()
    assert receive["bindings"] == {"nats": {"queue": "slack", "bindingVersion": "0.1.0"}}
    message = docs["slack"]["components"]["messages"]["task.created.v1"]
    assert message["contentType"] == "application/cloudevents+json"
    assert set(message["headers"]["properties"]) == {"Content-Type", "tidings-key", "Nats-Msg-Id"}


class Address(BaseModel):
    street: str


class OrderPlaced(BaseModel):
    """An order was placed.

    Sent once the payment is authorised."""

    order_id: str
    total: int
    ship_to: Address
    channel: Literal["web", "shop"] = "web"


def order_placed_v2() -> type[BaseModel]:
    """Version 2, whose nested model has the name of version 1's, not its fields."""

    class Address(BaseModel):
        lines: list[str]
        country: str

    class OrderPlaced(BaseModel):
        order_id: str
        total: float
        ship_to: Address
        placed_at: datetime

    return OrderPlaced


def orders(url: str) -> Tidings:
    app = Tidings(url, service="orders")
    app.event("order.placed", 1, subject="order_id")(OrderPlaced)
    app.event("order.placed", 2, subject="order_id")(order_placed_v2())
    app.topic("orders", partitions=3, retention_ms=86_400_000)
    app.publishes("orders", ["order.placed", "order.cancelled"])

    @app.subscriber("orders", group="billing", types=["order.placed"])
    async def bill(order: Any) -> None: ...

    @app.subscriber("payments", group="billing")
    async def settle(payment: Any) -> None: ...

    @app.subscriber("orders", group="ledger")
    async def record(event: Any) -> None: ...

    return app


ORDER_URLS = {
    "kafka": "kafka://127.0.0.1:9092",
    "kafka-structured": "kafka://127.0.0.1:9092?format=structured",
    "kafka-ssl": "kafka://127.0.0.1:9093?security_protocol=SSL",
    "nats": "nats://127.0.0.1:4222",
    "memory": "memory://",
}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_each_version_is_a_message_with_its_models_schemas(tmp_path: Path) -> None:
    doc = document(orders(f"sqlite:///{tmp_path}/o.db"))
    messages, schemas = doc["components"]["messages"], doc["components"]["schemas"]
    assert sorted(messages) == [ANY_EVENT, "order.cancelled", "order.placed.v1", "order.placed.v2"]
    assert sorted(schemas) == [
        "order.placed.v1",
        "order.placed.v1.Address",
        "order.placed.v2",
        "order.placed.v2.Address",
    ]
    assert "#/$defs/" not in json.dumps(doc)
    for ref in refs(doc):
        assert resolve(doc, ref) is not None
    v1 = messages["order.placed.v1"]
    assert v1["summary"] == "An order was placed."
    assert v1["description"].endswith("Sent once the payment is authorised.")
    assert v1["x-tidings-subject-field"] == "order_id"
    envelope = v1["payload"]["properties"]
    assert envelope["type"]["const"] == "order.placed"
    assert envelope["dataversion"]["const"] == 1
    assert envelope["data"] == {"$ref": "#/components/schemas/order.placed.v1"}
    assert schemas["order.placed.v1"]["properties"]["ship_to"] == {
        "$ref": "#/components/schemas/order.placed.v1.Address"
    }
    assert messages["order.cancelled"]["payload"]["properties"]["data"] == {}
    send = doc["operations"]["send.orders.order.placed"]["messages"]
    assert [m["$ref"] for m in send] == [
        "#/channels/orders/messages/order.placed.v1",
        "#/channels/orders/messages/order.placed.v2",
    ]
    # A group taking every type: what is known on the topic, else any event.
    ledger = doc["operations"]["receive.ledger.orders"]["messages"]
    assert [m["$ref"].rpartition("/")[2] for m in ledger] == [
        "order.cancelled",
        "order.placed.v1",
        "order.placed.v2",
    ]
    assert list(doc["channels"]["orders"]["messages"]) == [
        "order.cancelled",
        "order.placed.v1",
        "order.placed.v2",
    ]
    payments = doc["operations"]["receive.billing.payments"]["messages"]
    assert payments == [{"$ref": f"#/channels/payments/messages/{ANY_EVENT}"}]


def test_kafka_binary_mode_puts_the_attributes_in_ce_headers() -> None:
    doc = document(orders(ORDER_URLS["kafka"]))
    message = doc["components"]["messages"]["order.placed.v2"]
    headers = message["headers"]
    assert headers["required"] == ["ce_specversion", "ce_id", "ce_source", "ce_type"]
    assert headers["properties"]["ce_type"]["const"] == "order.placed"
    assert headers["properties"]["ce_dataversion"]["const"] == "2"
    assert headers["properties"]["content-type"]["const"] == "application/json"
    assert message["payload"] == {"$ref": "#/components/schemas/order.placed.v2"}
    assert message["bindings"]["kafka"]["key"]["type"] == "string"
    where = doc["components"]["correlationIds"]["correlationid"]["location"]
    assert where == "$message.header#/ce_correlationid"
    assert doc["channels"]["orders"]["bindings"]["kafka"] == {
        "partitions": 3,
        "topicConfiguration": {"retention.ms": 86_400_000},
        "bindingVersion": "0.5.0",
    }


def check_against(schema: dict[str, Any], values: dict[str, Any]) -> None:
    """``values`` has the schema's required names, no other, and its fixed values."""
    properties = schema["properties"]
    assert set(schema.get("required", ())) <= set(values) <= set(properties)
    for name, value in values.items():
        if "const" in properties[name]:
            assert value == properties[name]["const"], name


def test_an_event_as_kafka_writes_it_matches_its_message() -> None:
    app = orders(ORDER_URLS["kafka"])
    doc = document(app)
    placed = OrderPlaced(order_id="o1", total=3, ship_to=Address(street="Main St 1"))
    event = app.build(
        placed, correlation_id="c1", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    )
    value, headers = event_to_kafka(event, 1 << 20)
    message = doc["components"]["messages"]["order.placed.v1"]
    check_against(message["headers"], {k: v.decode() for k, v in dict(headers).items()})
    data = json.loads(value or b"")
    check_against(resolve(doc, message["payload"]["$ref"]), data)
    assert headers["ce_correlationid"] == b"c1"


@pytest.mark.parametrize("url", ["kafka-structured", "nats", "memory"])
def test_an_event_in_structured_mode_matches_its_message(url: str) -> None:
    app = orders(ORDER_URLS[url])
    doc = document(app)
    v2 = app.registry.lookup("order.placed", 2)
    assert v2 is not None
    placed = v2.model.model_validate(
        {"order_id": "o2", "total": 2.5, "ship_to": {"lines": ["x"], "country": "NL"},
         "placed_at": "2026-12-07T10:00:00Z"}
    )  # fmt: skip
    structured = json.loads(encode(app.build(placed, key="k")))
    message = doc["components"]["messages"]["order.placed.v2"]
    check_against(message["payload"], structured)
    schema = resolve(doc, message["payload"]["properties"]["data"]["$ref"])
    check_against(schema, structured["data"])
    check_against(
        resolve(doc, schema["properties"]["ship_to"]["$ref"]), structured["data"]["ship_to"]
    )


def test_structured_mode_puts_them_in_the_payload() -> None:
    doc = document(orders(ORDER_URLS["kafka-structured"]))
    message = doc["components"]["messages"]["order.placed.v1"]
    assert message["contentType"] == "application/cloudevents+json"
    assert message["headers"]["properties"]["content-type"]["const"] == (
        "application/cloudevents+json"
    )
    assert message["payload"]["required"] == ["specversion", "id", "source", "type", "data"]
    where = doc["components"]["correlationIds"]["correlationid"]["location"]
    assert where == "$message.payload#/correlationid"


def test_the_order_documents_pass_the_official_parser(tmp_path: Path, validate: Validate) -> None:
    docs = {name: document(orders(url)) for name, url in ORDER_URLS.items()}
    docs["sqlite"] = document(orders(f"sqlite:///{tmp_path}/o.db"))
    assert docs["kafka-ssl"]["servers"]["kafka"]["protocol"] == "kafka-secure"
    assert_valid(validate(docs))


def test_what_a_contract_says_of_itself_is_shown() -> None:
    from tidings.asyncapi import _about

    contract = SimpleNamespace(
        model=OrderPlaced,
        subject=None,
        description="Bill a customer.",
        kind="command",
        owner="billing",
        deprecated=True,
        sunset="2027-06-30",
    )
    assert _about(contract) == {
        "summary": "Bill a customer.",
        "description": "Bill a customer.",
        "deprecated": True,
        "x-tidings-kind": "command",
        "x-tidings-owner": "billing",
        "x-tidings-sunset": "2027-06-30",
    }


def test_a_broken_document_is_reported_with_the_parsers_error(
    tmp_path: Path, validate: Validate
) -> None:
    good = document(orders(ORDER_URLS["kafka"]))
    no_version = copy.deepcopy(good)
    del no_version["info"]["version"]
    bad_binding = copy.deepcopy(good)
    kafka = bad_binding["operations"]["receive.billing.orders"]["bindings"]["kafka"]
    kafka["groupId"] = 7  # a schema object is required, not a number
    said = validate({"good": good, "no_version": no_version, "bad_binding": bad_binding})
    assert_valid({"good": said["good"]})
    assert not said["no_version"].parsed
    assert any(
        'must have required property "version"' in e["message"] and e["path"] == ["info"]
        for e in said["no_version"].errors
    ), said["no_version"].diagnostics
    assert said["bad_binding"].errors, said["bad_binding"].diagnostics
    assert any("groupId" in "/".join(map(str, e["path"])) for e in said["bad_binding"].errors)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_command_writes_the_document_of_module_app(tmp_path: Path, validate: Validate) -> None:
    (tmp_path / "shop.py").write_text(
        "from pydantic import BaseModel\n"
        "from tidings import Tidings\n"
        "app = Tidings(service='shop')\n"
        "@app.event('cart.checked_out', subject='cart_id')\n"
        "class CheckedOut(BaseModel):\n"
        "    cart_id: str\n"
        "app.publishes('carts', ['cart.checked_out'])\n"
        "@app.subscriber('carts', group='mailer', types=['cart.checked_out'])\n"
        "async def mail(event): pass\n"
    )
    written = run_cli(
        "asyncapi", "shop:app", "-o", "shop.json", "--url", "nats://127.0.0.1:4222", cwd=tmp_path
    )
    assert written.returncode == 0, written.stderr
    assert written.stdout == "wrote shop.json: 1 channel(s), 2 operation(s), 1 message(s)\n"
    printed = run_cli("asyncapi", "shop:app", "--api-version", "2.1.0", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    on_nats = json.loads((tmp_path / "shop.json").read_text())
    on_sqlite = json.loads(printed.stdout)
    assert on_nats["servers"]["nats"]["protocol"] == "nats"
    assert on_sqlite["servers"]["sqlite"]["pathname"] == "./tidings.db"
    assert on_sqlite["info"] == {
        "title": "shop",
        "version": "2.1.0",
        "description": on_nats["info"]["description"],
    }
    assert_valid(validate({"nats": on_nats, "sqlite": on_sqlite}))


def test_the_command_refuses_what_is_not_an_app_and_a_file_it_cannot_write(
    tmp_path: Path,
) -> None:
    (tmp_path / "nothing.py").write_text(
        "app = 42\nfrom tidings import Tidings\nok = Tidings(service='s')\n"
    )
    result = run_cli("asyncapi", "nothing:app", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "tidings: error: nothing:app is int, not a tidings.Tidings app; its apps: ok\n"
    )
    assert result.stdout == ""
    result = run_cli("asyncapi", "nothing:ok", "-o", "no/such/dir.json", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "tidings: error: cannot write no/such/dir.json: No such file or directory\n"
    )
