"""What a group's subscribers are given of an event whose personal fields are sealed
(docs/personal-data.md; decisions 0036 and 0038): the fields opened for a subscriber
that asks for personal data when the app has a key store, masked for every other; and
what a handler given them in clear raises, with those values cut out before any
middleware sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.shredding.fields import EXTENSION, shown
from tidings.shredding.redaction import clear_values, redact

if TYPE_CHECKING:
    from tidings.envelope import Event
    from tidings.shredding.fields import Shredder
    from tidings.subscriber import Subscriber

__all__ = ["PersonalView"]


class PersonalView:
    """The personal fields of one app's events as its subscribers see them."""

    __slots__ = ("shredder",)

    def __init__(self, shredder: Shredder | None) -> None:
        self.shredder = shredder  # None: personal fields reach every handler masked

    def data(self, sub: Subscriber, event: Event) -> Any:
        """The data of ``event`` (it has sealed fields) as ``sub`` may see it."""
        return shown(event.id, event.data, self.shredder if sub.personal else None)

    def clear(self, sub: Subscriber) -> bool:
        """Whether ``sub`` is given personal fields in clear."""
        return sub.personal and self.shredder is not None

    def redact(self, sub: Subscriber, event: Event, exc: BaseException) -> None:
        """Cut the values of ``event`` that ``sub`` was given in clear out of ``exc``,
        which its handler raised in a run (where a call is not wrapped in
        :func:`~tidings.shredding.redaction.guarded`: that is a coroutine more per
        event). Opens the event again: only a failure pays for it."""
        if EXTENSION in event.extensions and self.clear(sub):
            try:
                opened = self.data(sub, event)
            except Exception:  # not opened: nothing was given in clear
                return
            redact(exc, clear_values(event.data, opened))
