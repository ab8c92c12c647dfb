"""tidings: an event backbone for Python services and AI agents.

A service announces facts (``task.created``); any number of independent groups react,
each at its own pace. The log is one SQLite file by default (``sqlite:///./tidings.db``)
and the same code runs on other transports by changing the URL.

Public modules: the names in their ``__all__`` are the API; every other module is
internal and may change without notice.

- ``tidings``: the app, publishing, subscribing, the worker, the errors' roots;
- ``tidings.errors``: the whole error hierarchy;
- ``tidings.middleware``: writing and composing middleware;
- ``tidings.testing``: helpers, the transport conformance suite, fault injection;
- ``tidings.transport``: the protocol a log engine implements;
- ``tidings.transports``: opening a transport by URL;
- ``tidings.codec``: events to bytes and back (structured and binary mode);
- ``tidings.asgi``: the correlation middleware for FastAPI/Starlette;
- ``tidings.outbox``, ``tidings.inbox``: exactly-once effects with a database;
- ``tidings.scheduler``: where delayed events wait (``app.scheduler``);
- ``tidings.sqltypes``: column types for tables beside the outbox (``UTCDateTime``);
- ``tidings.dead_letters``: reading, replaying and purging a group's dead letters;
- ``tidings.admin``: the operating library behind the ``tidings`` command;
- ``tidings.schema``: whether a new payload schema version may follow the earlier ones.
- ``tidings.personal``: marking payload fields as personal data, and whose they are;
- ``tidings.shredding``: their encryption, key stores, erasure and masks (``tidings erase``);
- ``tidings.asyncapi``: an app's AsyncAPI 3.0 document (``tidings asyncapi``);
- ``tidings.catalog``: the event catalog of a log (``tidings catalog``);
- ``tidings.dashboard``: the operator dashboard, served or mounted (the ``dashboard`` extra);
- ``tidings.logs``: log lines with the handled event's coordinates, as text or JSON;
- ``tidings.metrics``: a worker's Prometheus metrics (the ``metrics`` extra);
- ``tidings.otel``: OpenTelemetry spans of publishes and handler calls (the ``otel`` extra);
- ``tidings.aggregates``: event-sourced aggregates and their store;
- ``tidings.projections``: read models kept from the log and rebuilt while they serve;
- ``tidings.sagas``: sagas (process managers): ``app.saga(...)``, ``tidings sagas``.
"""

from typing import TYPE_CHECKING, Any

from tidings.app import DEFAULT_URL, Tidings
from tidings.codec import DEFAULT_MAX_EVENT_BYTES, decode, encode
from tidings.context import Context, correlation_scope, current_scope
from tidings.envelope import Event, new_id
from tidings.errors import (
    ConfigError,
    DecodeError,
    EventError,
    EventTooLarge,
    GroupBusy,
    GroupNotFound,
    InvalidEventType,
    TidingsError,
    TopicNotFound,
    TransportError,
    UnknownEventType,
)
from tidings.inbox import Inbox
from tidings.middleware import Retry
from tidings.subscriber import Subscriber
from tidings.transport import Transport
from tidings.transports import open_transport
from tidings.worker import Worker

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_URL",
    "ConfigError",
    "Context",
    "DecodeError",
    "Event",
    "EventError",
    "EventTooLarge",
    "GroupBusy",
    "GroupNotFound",
    "Inbox",
    "InvalidEventType",
    "Outbox",
    "Retry",
    "Subscriber",
    "Tidings",
    "TidingsError",
    "TopicNotFound",
    "Transport",
    "TransportError",
    "UnknownEventType",
    "Worker",
    "correlation_scope",
    "current_scope",
    "decode",
    "encode",
    "new_id",
    "open_transport",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tidings.outbox import Outbox


def __getattr__(name: str) -> Any:
    # The outbox needs SQLAlchemy, slow to import: loaded on first use, so that
    # 'import tidings' (every CLI command, every worker) does not pay for it.
    if name == "Outbox":
        from tidings.outbox import Outbox

        return Outbox
    raise AttributeError(f"module 'tidings' has no attribute {name!r}")
