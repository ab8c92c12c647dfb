"""AsyncAPI 3.0 documents of tidings apps: what an app sends and receives, where, and
in which form on the wire.

:func:`document` reads an app's declarations, connects to nothing and returns the
document as a dict (``tidings asyncapi module:app`` writes it as JSON):

- ``servers``: the brokers of the app's URL (``kafka``, ``kafka-secure`` with TLS, or
  ``nats``; the embedded log is protocol ``sqlite``, host ``localhost`` and the file as
  ``pathname``; ``memory://`` is protocol ``memory``). User names, passwords and tokens
  never appear; a SASL mechanism or a user and password login is named as a security
  scheme;
- ``channels``: one per topic the app declares (:meth:`~tidings.Tidings.topic`),
  publishes on (:meth:`~tidings.Tidings.publishes`) or subscribes to; its address is
  the topic (on NATS the subjects ``<stream>.{partition}.{type}``), its messages the
  types sent and received there, the Kafka binding its declared partitions and
  retention;
- ``operations``: ``send`` per declared (topic, type), ``receive`` per group and topic
  (the Kafka binding's ``groupId``, the NATS binding's ``queue``: the group);
- ``components.messages``: one per registered (type, version), named
  ``<type>.v<version>``, its payload the model's JSON Schema (nested models under
  ``components.schemas``); a declared type without a model is ``<type>`` with any
  JSON, and a group taking every type of a channel on which no type is known receives
  ``cloudevent``, any event. The CloudEvents attributes are where the transport puts
  them: headers named ``ce_<attribute>`` in Kafka's binary mode (the default), the
  members of the structured-mode JSON document elsewhere (NATS, SQLite, Kafka with
  ``format=structured``), in which the payload is the ``data`` member. The
  ``correlationId`` points to ``correlationid``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from tidings.app import Tidings
from tidings.codec.binary import ATTRIBUTES, STRUCTURED_CONTENT_TYPE, binary_header
from tidings.contracts import Contract
from tidings.envelope import SPECVERSION
from tidings.subscriber import Subscriber

__all__ = ["ANY_EVENT", "ASYNCAPI_VERSION", "document"]

ASYNCAPI_VERSION = "3.0.0"
"""The version of the AsyncAPI specification that :func:`document` follows."""
ANY_EVENT = "cloudevent"
"""The message of a group that takes every type of a channel on which none is known."""
_KAFKA_BINDING = "0.5.0"
_NATS_BINDING = "0.1.0"
_JSON = "application/json"
_REQUIRED = ("specversion", "id", "source", "type")  # CloudEvents' required attributes
_ATTRIBUTES: dict[str, tuple[str, dict[str, Any]]] = {  # attribute -> (meaning, JSON type)
    "specversion": ("The CloudEvents version", {"type": "string", "const": SPECVERSION}),
    "id": ("The event's id, a UUIDv7: unique and time-ordered", {"type": "string"}),
    "source": ("The service that published it: its Tidings(service=...)", {"type": "string"}),
    "type": ("The event type, domain.action in the past tense", {"type": "string"}),
    "time": ("When it happened, RFC 3339 in UTC", {"type": "string", "format": "date-time"}),
    "subject": (
        "The entity it is about; the partition key unless partitionkey is set",
        {"type": "string"},
    ),
    "dataschema": ("The URI of the payload's schema", {"type": "string"}),
    "correlationid": ("The request that this event belongs to", {"type": "string"}),
    "causationid": ("The id of the event or request that caused it", {"type": "string"}),
    "traceparent": ("W3C trace context", {"type": "string"}),
    "partitionkey": ("The partition key, where it differs from the subject", {"type": "string"}),
    "dataversion": ("The payload schema's version", {"type": "integer", "minimum": 1}),
    "datacontenttype": ("The media type of the data", {"type": "string", "const": _JSON}),
}


class _Wire:
    """How the app's transport carries an event, and where its brokers are."""

    def __init__(self, app: Tidings) -> None:
        self.scheme = urlsplit(app.url).scheme
        self.headers: dict[str, Any] = {}  # header -> schema, beside the CloudEvents ones
        self.binary = False  # attributes in ce_ headers, the data alone as the payload
        self.security: dict[str, Any] = {}
        self.client_id: str | None = None
        self.servers = self._servers(app)

    def _servers(self, app: Tidings) -> dict[str, Any]:
        if self.scheme == "kafka":
            return self._kafka(app)
        if self.scheme == "nats":
            return self._nats(app)
        if self.scheme == "sqlite":
            path = getattr(app.transport, "path", None) or urlsplit(app.url).path
            about = "The embedded log: one SQLite file, read and written in process"
            return {"sqlite": _server("localhost", "sqlite", about, pathname=str(path))}
        if self.scheme == "memory":
            about = "The in-memory log: in this process only, not durable"
            return {"memory": _server("localhost", "memory", about)}
        # A transport of the user's own: its scheme is all that is known of it.
        return {self.scheme: _server("localhost", self.scheme, "A tidings transport")}

    def _kafka(self, app: Tidings) -> dict[str, Any]:
        from tidings.transports.kafka.config import KafkaConfig, parse_kafka_url

        config = getattr(app.transport, "config", None)
        cfg = config if isinstance(config, KafkaConfig) else parse_kafka_url(app.url)
        self.binary = cfg.format == "binary"
        self.client_id = cfg.client_id
        if not self.binary:
            self.headers["content-type"] = _const(STRUCTURED_CONTENT_TYPE, "Structured mode")
        if cfg.sasl_mechanism is not None:
            kind = {"PLAIN": "plain"}.get(cfg.sasl_mechanism) or "scramSha" + (
                cfg.sasl_mechanism.rsplit("-", 1)[-1]
            )
            self.security["sasl"] = {"type": kind, "description": f"SASL {cfg.sasl_mechanism}"}
        elif cfg.ssl_certfile is not None:
            self.security["tls-client"] = {"type": "X509", "description": "A client certificate"}
        protocol = "kafka-secure" if cfg.security_protocol.endswith("SSL") else "kafka"
        about = f"A Kafka broker ({cfg.security_protocol})"
        return _numbered("kafka", cfg.bootstrap, protocol, about, self.security)

    def _nats(self, app: Tidings) -> dict[str, Any]:
        from tidings.transports.nats.config import NatsConfig, parse_nats_url
        from tidings.transports.nats.records import KEY_HEADER

        config = getattr(app.transport, "config", None)
        cfg = config if isinstance(config, NatsConfig) else parse_nats_url(app.url)
        self.headers = {
            "Content-Type": _const(STRUCTURED_CONTENT_TYPE, "Structured mode"),
            KEY_HEADER: {"type": "string", "description": "The partition key"},
            "Nats-Msg-Id": {
                "type": "string",
                "description": "The event's id: JetStream stores a repeated publish once",
            },
        }
        if cfg.user is not None:
            self.security["user-password"] = {"type": "userPassword"}
        about = "A NATS server with JetStream" + (" (TLS)" if cfg.tls else "")
        return _numbered("nats", cfg.servers, "nats", about, self.security)

    @property
    def content_type(self) -> str:
        return _JSON if self.binary else STRUCTURED_CONTENT_TYPE

    def address(self, topic: str, types: list[str], partitions: int | None) -> dict[str, Any]:
        """The channel's address and its parameters: the topic, or NATS subjects."""
        if self.scheme != "nats":
            return {"address": topic}
        from tidings.transports.nats.streams import stream_name

        partition: dict[str, Any] = {
            "description": "The partition: murmur2 of the partition key, modulo the partitions"
        }
        if partitions:
            partition["enum"] = [str(p) for p in range(partitions)]
        kind: dict[str, Any] = {
            "description": "The event type",
            "location": "$message.payload#/type",
        }
        if types:
            kind["enum"] = types
        return {
            "address": stream_name(topic) + ".{partition}.{type}",
            "parameters": {"partition": partition, "type": kind},
        }

    def correlation(self) -> dict[str, Any]:
        where = (
            "$message.header#/" + binary_header("correlationid")
            if self.binary
            else "$message.payload#/correlationid"
        )
        return {"description": _ATTRIBUTES["correlationid"][0], "location": where}


def _server(host: str, protocol: str, about: str, **more: Any) -> dict[str, Any]:
    return {"host": host, "protocol": protocol, "description": about, **more}


def _numbered(
    name: str, hosts: Iterable[str], protocol: str, about: str, security: dict[str, Any]
) -> dict[str, Any]:
    """A server per host: ``name``, or ``name-1``, ``name-2``... for several."""
    hosts = list(hosts)
    servers = {}
    for i, host in enumerate(hosts, 1):
        server = _server(host, protocol, about)
        if security:
            server["security"] = [{"$ref": f"#/components/securitySchemes/{s}"} for s in security]
        servers[name if len(hosts) == 1 else f"{name}-{i}"] = server
    return servers


def _const(value: str, about: str) -> dict[str, Any]:
    return {"type": "string", "const": value, "description": about}


class _Messages:
    """``components.messages`` and ``components.schemas``, built as channels ask."""

    def __init__(self, app: Tidings, wire: _Wire) -> None:
        self.app, self.wire = app, wire
        self.messages: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}

    def of_type(self, type: str) -> list[str]:
        """The ids of the messages of ``type``: one per registered version, else one
        with any JSON as its data."""
        registry = self.app.registry
        contracts = [registry.lookup(type, v) for v in registry.versions(type)]
        return [self._add(type, c) for c in contracts] or [self._add(type, None)]

    def any_event(self) -> str:
        return self._add(None, None)

    def _add(self, type: str | None, contract: Contract | None) -> str:
        if type is None:
            name = ANY_EVENT
        else:
            name = type if contract is None else f"{type}.v{contract.version}"
        if name in self.messages:
            return name
        known: dict[str, Any] = {}  # attributes whose value the message fixes
        data: dict[str, Any] = {}  # any JSON
        if type is not None:
            known["type"] = type
        if contract is not None:
            known.update(dataversion=contract.version, dataschema=contract.schema_uri)
            data = {"$ref": "#/components/schemas/" + self._schema(name, contract)}
        message: dict[str, Any] = {
            "name": type or ANY_EVENT,
            "title": name if contract is None else f"{type} v{contract.version}",
            "contentType": self.wire.content_type,
        }
        if self.wire.binary:
            headers = _attributes(known, header=True) | self.wire.headers
            message["headers"] = _object([binary_header(a) for a in _REQUIRED], headers)
            message["payload"] = data
        else:
            if self.wire.headers:
                message["headers"] = _object([], self.wire.headers)
            required = [*_REQUIRED, "data"] if contract is not None else list(_REQUIRED)
            properties = _attributes(known, header=False) | {"data": data}
            message["payload"] = _object(required, properties)
        message["correlationId"] = {"$ref": "#/components/correlationIds/correlationid"}
        if self.wire.scheme == "kafka":
            message["bindings"] = {"kafka": _kafka_key(contract)}
        message.update(_about(contract) if contract is not None else {})
        self.messages[name] = message
        return name

    def _schema(self, name: str, contract: Contract) -> str:
        """Put the model's schema under ``name``, its nested models under
        ``<name>.<model>``, with their references pointed there; return ``name``."""
        schema = contract.json_schema()
        prefix = name + "."
        for nested, body in schema.pop("$defs", {}).items():
            self.schemas[prefix + nested] = _rewrite(body, prefix)
        self.schemas[name] = _rewrite(schema, prefix)
        return name


def _attributes(known: dict[str, Any], *, header: bool) -> dict[str, Any]:
    """The schema of each CloudEvents attribute: as a binary-mode header (a string) or
    as a member of the structured document."""
    out: dict[str, Any] = {}
    for attribute in (*ATTRIBUTES, "datacontenttype"):
        about, form = _ATTRIBUTES[attribute]
        schema = {"description": about, **form}
        value = known.get(attribute, schema.get("const"))
        if header:
            schema = {"description": about, "type": "string"}
            if attribute == "time":
                schema["format"] = "date-time"
            elif attribute == "dataversion":
                schema["pattern"] = "^[1-9][0-9]*$"
            if value is not None:
                schema["const"] = str(value)
        elif value is not None:
            schema["const"] = value
        out[binary_header(attribute) if header else attribute] = schema
    return out


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _kafka_key(contract: Contract | None) -> dict[str, Any]:
    field = contract.subject if contract is not None else None
    about = "The partition key: the key given to publish, else the subject" + (
        f" (the payload's {field!r})" if field else ""
    )
    return {"key": {"type": "string", "description": about}, "bindingVersion": _KAFKA_BINDING}


def _about(contract: Contract) -> dict[str, Any]:
    """What a contract says of itself: its description (default: its model's
    docstring), kind, owner, and whether it is deprecated, until when."""
    out: dict[str, Any] = {}
    if contract.description:
        text = inspect.cleandoc(contract.description)
        out["summary"] = text.split("\n\n", 1)[0].replace("\n", " ")
        out["description"] = text
    if contract.deprecated:
        out["deprecated"] = True
    out["x-tidings-kind"] = contract.kind
    if contract.owner is not None:
        out["x-tidings-owner"] = contract.owner
    if contract.sunset is not None:
        out["x-tidings-sunset"] = str(contract.sunset)
    if contract.subject is not None:
        out["x-tidings-subject-field"] = contract.subject
    return out


def _rewrite(node: Any, prefix: str) -> Any:
    """``node`` with each ``#/$defs/<model>`` reference made ``#/components/schemas/
    <prefix><model>``."""
    if isinstance(node, dict):
        return {
            key: "#/components/schemas/" + prefix + value[len("#/$defs/") :]
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/")
            else _rewrite(value, prefix)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(value, prefix) for value in node]
    return node


def document(app: Tidings, *, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``app``, as a dict ready for ``json.dumps``.

    ``version`` is the document's ``info.version`` (the app's API version). Nothing is
    connected to; the app need not be started.
    """
    wire = _Wire(app)
    messages = _Messages(app, wire)
    channels, operations = _channels(app, wire, messages)
    components: dict[str, Any] = {
        "messages": messages.messages,
        "schemas": messages.schemas,
        "correlationIds": {"correlationid": wire.correlation()},
    }
    if wire.security:
        components["securitySchemes"] = wire.security
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": app.service,
            "version": version,
            "description": f"The events that {app.service} sends and receives: CloudEvents "
            "1.0, each type's payload versioned.",
        },
        "servers": wire.servers,
        "defaultContentType": wire.content_type,
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def _channels(
    app: Tidings, wire: _Wire, messages: _Messages
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The channels (one per topic) and the operations on them."""
    receivers: dict[tuple[str, str], list[Subscriber]] = {}
    for subscriber in app.subscribers:
        receivers.setdefault((subscriber.group, subscriber.topic), []).append(subscriber)
    settings = app.topic_settings()
    topics = sorted({*settings, *app.published, *(topic for _, topic in receivers)})
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in topics:
        sent = {t: messages.of_type(t) for t in sorted(app.published.get(topic, ()))}
        for type, ids in sent.items():
            operations[f"send.{topic}.{type}"] = _send(wire, topic, type, ids)
        groups = sorted(group for group, on in receivers if on == topic)
        typed = {g: _typed(receivers[g, topic], messages) for g in groups}
        known = [i for ids in (*sent.values(), *typed.values()) for i in ids or ()]
        on_channel = dict.fromkeys(known)  # the message ids, in order, once each
        for group in groups:
            taken = typed[group]
            if taken is None:  # every type: what is known here, else any event
                taken = list(on_channel) or [messages.any_event()]
            operations[f"receive.{group}.{topic}"] = _receive(
                wire, topic, group, receivers[group, topic], taken
            )
            on_channel.update(dict.fromkeys(taken))
        names = sorted({messages.messages[i]["name"] for i in on_channel})
        channel = wire.address(
            topic, [n for n in names if n != ANY_EVENT], _partitions(settings, topic)
        )
        channel["title"] = topic
        channel["messages"] = {i: {"$ref": f"#/components/messages/{i}"} for i in on_channel}
        if wire.scheme == "kafka":
            channel["bindings"] = {"kafka": _kafka_topic(settings.get(topic))}
        channels[topic] = channel
    return channels, operations


def _typed(subscribers: list[Subscriber], messages: _Messages) -> list[str] | None:
    """The messages of the types a group's subscribers on one topic take; None if one
    of them takes every type."""
    if any(s.types is None for s in subscribers):
        return None
    types = sorted({t for s in subscribers for t in s.types or ()})
    return [i for t in types for i in messages.of_type(t)]


def _refs(topic: str, ids: list[str]) -> dict[str, Any]:
    return {
        "channel": {"$ref": f"#/channels/{topic}"},
        "messages": [{"$ref": f"#/channels/{topic}/messages/{i}"} for i in ids],
    }


def _send(wire: _Wire, topic: str, type: str, ids: list[str]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": "send",
        **_refs(topic, ids),
        "title": f"Publish {type}",
        "summary": f"Publishes {type} events on {topic}",
    }
    if wire.scheme == "kafka" and wire.client_id:
        client = {"type": "string", "enum": [wire.client_id]}
        operation["bindings"] = {"kafka": {"clientId": client, "bindingVersion": _KAFKA_BINDING}}
    return operation


def _receive(
    wire: _Wire, topic: str, group: str, subscribers: list[Subscriber], ids: list[str]
) -> dict[str, Any]:
    handlers = ", ".join(s.name for s in subscribers)
    operation: dict[str, Any] = {
        "action": "receive",
        **_refs(topic, ids),
        "title": f"Group {group}",
        "summary": f"Group {group} handles events of {topic}",
        "description": f"Consumer group {group!r}, from the {subscribers[0].start_from} "
        f"offset when it first starts; handlers: {handlers}.",
    }
    if wire.scheme == "kafka":
        kafka: dict[str, Any] = {"groupId": {"type": "string", "enum": [group]}}
        if wire.client_id:
            kafka["clientId"] = {"type": "string", "enum": [wire.client_id]}
        operation["bindings"] = {"kafka": {**kafka, "bindingVersion": _KAFKA_BINDING}}
    elif wire.scheme == "nats":
        operation["bindings"] = {"nats": {"queue": group, "bindingVersion": _NATS_BINDING}}
    return operation


def _partitions(settings: dict[str, dict[str, Any]], topic: str) -> int | None:
    partitions = (settings.get(topic) or {}).get("partitions")
    return partitions if isinstance(partitions, int) else None


def _kafka_topic(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The Kafka channel binding: what the app declared of the topic."""
    binding: dict[str, Any] = {}
    settings = settings or {}
    if settings.get("partitions"):
        binding["partitions"] = settings["partitions"]
    configuration = {
        name: settings[key]
        for name, key in (("retention.ms", "retention_ms"), ("retention.bytes", "retention_bytes"))
        if settings.get(key) is not None
    }
    if configuration:
        binding["topicConfiguration"] = configuration
    return {**binding, "bindingVersion": _KAFKA_BINDING}
