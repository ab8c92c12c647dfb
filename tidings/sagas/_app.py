"""What a saga needs of the app it runs in: a narrow interface, so that the sagas
depend on it and not on :class:`tidings.Tidings` (which satisfies it as it is)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tidings.contracts import Registry
from tidings.outbox import OutboxApp
from tidings.subscriber import Component, Subscriber

__all__ = ["SagaApp"]


class SagaApp(OutboxApp, Protocol):
    """The app a saga subscribes in and publishes through (:class:`tidings.Tidings`)."""

    @property
    def registry(self) -> Registry:
        """The payload contracts (events parked and handled later are read with them)."""
        ...

    @property
    def subscribers(self) -> list[Subscriber]: ...

    @property
    def subscriber(self) -> Callable[..., Callable[[Any], Any]]:
        """``subscriber(topic, *, group=..., types=..., inbox=..., retry=...)``: the
        decorator that subscribes a handler (:meth:`tidings.Tidings.subscriber`)."""
        ...

    def add_component(self, component: Component) -> None: ...
