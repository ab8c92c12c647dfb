"""What an app declares: its payload contracts, topics, groups, subscribers,
components, projections and sagas (the first half of :class:`tidings.Tidings`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from tidings.contracts import Registry, Upcaster
from tidings.envelope import validate_type
from tidings.errors import ConfigError
from tidings.middleware.retry import Retry
from tidings.subscriber import Component, GroupSettings, Subscriber, handler_shape, slow_settings
from tidings.transport import StartFrom, check_group_name, check_topic_name

if TYPE_CHECKING:
    from tidings.projections import Projection

__all__ = ["Declarations"]

H = TypeVar("H", bound=Callable[..., Any])
M = TypeVar("M", bound=type[BaseModel])
U = TypeVar("U", bound=Upcaster)


class Declarations:
    """The declarations of one service's app; :class:`tidings.Tidings` is one."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = Registry()
        self.subscribers: list[Subscriber] = []
        self._topics: dict[str, dict[str, Any]] = {}
        self.published: dict[str, set[str]] = {}  # topic -> the types declared published there
        self._groups: dict[str, GroupSettings] = {}
        self.components: list[Component] = []
        self.projections: dict[str, Projection] = {}

    def event(
        self, type: str, version: int = 1, *, subject: str | None = None, **about: Any
    ) -> Callable[[M], M]:
        """Class decorator: register a pydantic model as the payload of ``type``/``version``.

        ``subject`` names a field whose value becomes the event's subject (and so its
        partition key) when none is passed to :meth:`publish`. ``about``: ``kind``
        ("event" or "command"), ``owner`` (default: this service), ``description``,
        ``deprecated``, ``sunset``, ``name_check``, ``breaking`` (a new major version,
        registered without a compatibility check) (:meth:`Registry.register`).
        """
        about.setdefault("owner", self.service)
        return self.registry.decorator(type, version, subject=subject, **about)

    def command(self, type: str, version: int = 1, **about: Any) -> Callable[[M], M]:
        """:meth:`event` for a command: a request named in the imperative
        (``task.assign``), subscribed to by exactly one group."""
        return self.event(type, version, kind="command", **about)

    def upcaster(self, type: str, from_version: int) -> Callable[[U], U]:
        """Decorator: a function that turns a ``from_version`` payload (a dict) of
        ``type`` into the next version's; handlers then get such events as that
        version (chains compose; decision 0020)."""
        return self.registry.upcaster(type, from_version)

    def topic(
        self,
        name: str,
        *,
        partitions: int | None = None,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        keep_unread: bool = False,
    ) -> None:
        """Declare a topic's settings; it is created with them on start if missing.

        ``keep_unread``: retention never deletes a record a live group has not
        committed (the SQLite and memory logs; Kafka and NATS refuse it)."""
        check_topic_name(name)
        self._topics[name] = {
            "partitions": partitions,
            "retention_ms": retention_ms,
            "retention_bytes": retention_bytes,
        }
        if keep_unread:
            self._topics[name]["keep_unread"] = True

    def topic_settings(self) -> dict[str, dict[str, Any]]:
        """The declared topics' settings (those given to :meth:`topic`), by name."""
        return {name: dict(settings) for name, settings in self._topics.items()}

    def publishes(self, topic: str, types: Iterable[str]) -> None:
        """Declare that this app publishes events of ``types`` on ``topic`` (kept in
        :attr:`published`): the send operations of its AsyncAPI document
        (:func:`tidings.asyncapi.document`). Publishing is not limited to them."""
        check_topic_name(topic)
        types = [types] if isinstance(types, str) else types
        self.published.setdefault(topic, set()).update(validate_type(t) for t in types)

    def group(
        self,
        name: str,
        *,
        sequenced: bool = False,
        sla: float | None = None,
        cancellable: bool = False,
        rate: float | None = None,
        max_calls: int | None = None,
        concurrency: int = 1,
    ) -> None:
        """Settings of group ``name``: ``sequenced``, ``sla``, the lag in seconds it
        must stay under, ``cancellable`` (its subscribers stop a cancelled chain:
        :meth:`cancel`), ``rate`` and ``max_calls`` (calls per second and calls at once
        over all its workers) and ``concurrency`` (events of distinct keys of one
        partition handled at once), for slow handlers: docs/agents.md; see
        :class:`GroupSettings`."""
        check_group_name(name)
        self._groups[name] = GroupSettings(
            sequenced=sequenced,
            sla=sla,
            cancellable=cancellable,
            rate=rate,
            max_calls=max_calls,
            concurrency=concurrency,
        )

    def group_settings(self, name: str) -> GroupSettings:
        return self._groups.get(name) or GroupSettings()

    def add_component(self, component: Component) -> None:
        """Run ``component`` beside the worker's groups (``tidings run``, ``Worker.serve``)."""
        self.components.append(component)

    def subscriber(
        self,
        topic: str,
        *,
        group: str,
        types: Iterable[str] | None = None,
        start_from: StartFrom = "earliest",
        retry: Retry | None = None,
        inbox: Any = None,
        timeout: float | None = None,
        cancellable: bool = False,
        progress_every: float = 1.0,
        progress_topic: str | None = None,
        personal: bool = False,
    ) -> Callable[[H], H]:
        """Decorator: run the handler for events of ``types`` on ``topic`` in ``group``.

        The handler takes the payload (its registered model, or the raw JSON data) and,
        optionally, a :class:`~tidings.context.Context`. It may be sync or async.
        ``retry`` is this handler's retry policy (default: the worker's); ``inbox`` a
        :class:`tidings.inbox.Inbox` that makes redelivered events have no second effect;
        ``timeout``, ``cancellable``, ``progress_every``, ``progress_topic`` for slow
        handlers (docs/agents.md); ``personal``: personal fields in clear, not masked.
        """
        check_topic_name(topic)
        if not group:
            raise ConfigError("subscriber(group=...) needs a group name, e.g. group='email'")
        check_group_name(group)
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError(f"subscriber(retry=...) takes a tidings.Retry, got {retry!r}")
        if start_from not in ("earliest", "latest"):
            raise ConfigError(f"start_from must be 'earliest' or 'latest', got {start_from!r}")
        wanted = None if types is None else frozenset(validate_type(t) for t in types)
        slow = slow_settings(timeout, cancellable, progress_every, progress_topic)

        def wrap(handler: H) -> H:
            takes_context, is_async = handler_shape(handler)
            self._check_start(group, start_from)
            subscriber = Subscriber(
                topic=topic,
                group=group,
                handler=handler,
                types=wanted,
                start_from=start_from,
                is_async=is_async,
                takes_context=takes_context,
                retry=retry,
                inbox=inbox,
                **slow,
                personal=bool(personal),
            )
            if inbox is not None:
                claim = getattr(inbox, "claim", None)
                if claim is None:
                    raise ConfigError(f"subscriber(inbox=...) takes a tidings.Inbox, got {inbox!r}")
                claim(subscriber)
            self.subscribers.append(subscriber)
            return handler

        return wrap

    def _check_start(self, group: str, start_from: StartFrom) -> None:
        for other in self.subscribers:
            if other.group == group and other.start_from != start_from:
                raise ConfigError(
                    f"group {group!r} has subscribers with start_from "
                    f"{other.start_from!r} and {start_from!r}; a group starts in one place"
                )

    def groups(self) -> list[str]:
        return sorted({s.group for s in self.subscribers})
