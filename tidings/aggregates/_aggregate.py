"""The aggregate: state rebuilt from its own events, and the events its methods record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from tidings.contracts import Registry
from tidings.errors import ConfigError

__all__ = ["Aggregate", "applies"]

F = TypeVar("F", bound=Callable[..., Any])

# What the base class keeps on an instance; everything else is the aggregate's state.
_OWN = frozenset({"id", "version", "_pending", "_saved_version", "_registry"})
_JSON_LEAVES = (str, int, float, bool, type(None))


def applies(*models: type[BaseModel]) -> Callable[[F], F]:
    """Mark a method of an :class:`Aggregate` as the one that applies payloads of these
    models to the state (the default :meth:`Aggregate.apply` calls it)::

        @applies(TaskCreated)
        def _created(self, event: TaskCreated) -> None:
            self.title = event.title
    """
    for model in models:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"@applies takes payload model classes, got {model!r}")

    def mark(method: F) -> F:
        method.__tidings_applies__ = models  # type: ignore[attr-defined]
        return method

    return mark


class Aggregate:
    """An event-sourced aggregate: its methods :meth:`record` events (registered payload
    models), and :meth:`apply` turns each event into state. Loading replays the stored
    events through :meth:`apply` (from a snapshot, when there is one).

    ``__init__`` takes no arguments and sets the initial state; ``id`` is set before it
    runs. ``version`` is the number of events applied, saved or not.

    Snapshots keep :meth:`snapshot_state` (default: the public attributes, which must
    then be JSON values); a stored snapshot whose ``snapshot_version`` differs from the
    class's is ignored, so raise ``snapshot_version`` whenever the state's shape changes.
    """

    snapshot_version: ClassVar[int] = 1
    _appliers: ClassVar[dict[type[BaseModel], Callable[[Any, Any], None]]] = {}

    id: str
    version: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        appliers = dict(cls._appliers)
        for value in vars(cls).values():
            for model in getattr(value, "__tidings_applies__", ()):
                appliers[model] = value
        cls._appliers = appliers
        version = cls.__dict__.get("snapshot_version", cls.snapshot_version)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(
                f"{cls.__name__}.snapshot_version must be an integer >= 1, got {version!r}"
            )

    def record(self, payload: BaseModel) -> None:
        """Apply ``payload`` (a registered event model) to the state, and keep it to be
        saved. An unregistered model raises :class:`~tidings.errors.ConfigError` here,
        once the aggregate came from a store, else when it is saved."""
        registry = self.__dict__.get("_registry")
        if not isinstance(payload, BaseModel):
            raise ConfigError(
                f"{type(self).__name__}.record() takes a registered pydantic event model, "
                f"got {type(payload).__name__}"
            )
        if registry is not None:
            registry.for_model(type(payload))
        self.apply(payload)
        self.version = self.__dict__.get("version", 0) + 1
        self.__dict__.setdefault("_pending", []).append(payload)

    def apply(self, payload: Any) -> None:
        """Change the state by one event. The default calls the method marked
        :func:`applies` for the payload's model; override it to dispatch otherwise."""
        method = self._appliers.get(type(payload))
        if method is None:
            raise ConfigError(
                f"{type(self).__name__} has no method for {type(payload).__name__}: mark "
                f"one with @applies({type(payload).__name__}), or override apply()"
            )
        method(self, payload)

    @property
    def pending(self) -> list[BaseModel]:
        """The events recorded since the aggregate was loaded or saved, oldest first."""
        return list(self.__dict__.get("_pending", ()))

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot keeps: a dict of JSON values. Default: the instance's
        attributes (``id`` and ``version`` aside), refused with the attribute's name if
        one is not JSON; override it (and :meth:`restore_snapshot`) for other state."""
        state = {k: v for k, v in vars(self).items() if k not in _OWN}
        for name, value in state.items():
            if not _is_json(value):
                raise ConfigError(
                    f"{type(self).__name__}.{name} is a {type(value).__name__}, which a "
                    "snapshot cannot keep as it is; override snapshot_state() and "
                    "restore_snapshot() to turn it into JSON values and back"
                )
        return state

    def restore_snapshot(self, state: dict[str, Any]) -> None:
        """Set the state from what :meth:`snapshot_state` gave (``__init__`` has not run)."""
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.__dict__.get('id')!r}, version={self.version})"


def _is_json(value: Any) -> bool:
    if isinstance(value, _JSON_LEAVES):
        return True
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(type(k) is str and _is_json(v) for k, v in value.items())
    return False


A = TypeVar("A", bound=Aggregate)


def fresh(cls: type[A], aggregate_id: str, registry: Registry | None) -> A:
    """A new aggregate of ``cls`` at version 0: ``id`` set, then ``__init__``."""
    aggregate = cls.__new__(cls)
    _bind(aggregate, aggregate_id, 0, registry)
    aggregate.__init__()  # type: ignore[misc]
    return aggregate


def from_snapshot(
    cls: type[A], aggregate_id: str, version: int, state: dict[str, Any], registry: Registry
) -> A:
    aggregate = cls.__new__(cls)
    _bind(aggregate, aggregate_id, version, registry)
    aggregate.restore_snapshot(state)
    return aggregate


def _bind(aggregate: Aggregate, aggregate_id: str, version: int, registry: Registry | None) -> None:
    d = aggregate.__dict__
    d["id"] = aggregate_id
    d["version"] = version
    d["_saved_version"] = version
    d["_pending"] = []
    d["_registry"] = registry


def saved_version(aggregate: Aggregate) -> int:
    """The version the aggregate was loaded (or last saved) at: what a save expects."""
    return int(aggregate.__dict__.get("_saved_version", 0))


def take_pending(aggregate: Aggregate) -> list[BaseModel]:
    return list(aggregate.__dict__.get("_pending", ()))


def mark_saved(aggregate: Aggregate) -> None:
    d = aggregate.__dict__
    d["_pending"] = []
    d["_saved_version"] = d.get("version", 0)
