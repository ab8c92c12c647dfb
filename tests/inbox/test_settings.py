"""The Inbox's settings and the middleware's checks, without a database: what is
refused, and how."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from tests.inbox.helpers import an_event, delivery, subscriber
from tidings import ConfigError
from tidings.inbox import Inbox
from tidings.middleware import Delivery, Stats
from tidings.middleware.inbox import InboxMiddleware


async def test_subscribers_without_an_inbox_pass_straight_through() -> None:
    seen: list[Any] = []

    async def call_next(d: Delivery) -> None:
        seen.append(d.session)

    d = delivery(subscriber(None, lambda p, c: None), an_event(), Stats())
    await InboxMiddleware().handle(d, call_next)
    assert seen == [None]
    assert d.stats.duplicates == 0


async def test_an_inbox_that_is_not_an_inbox_is_refused() -> None:
    async def call_next(d: Delivery) -> None:
        raise AssertionError("not called")

    d = delivery(subscriber("nope", lambda p, c: None), an_event(), Stats())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"takes a tidings\.Inbox"):
        await InboxMiddleware().handle(d, call_next)


@pytest.mark.parametrize(
    ("db", "match"),
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://u@h/d", "SQLite and PostgreSQL"),
        ("not a url", "not a database URL"),
        (42, "takes a database URL"),
        (sessionmaker(), "bound to one engine"),
    ],
)
def test_bad_databases_are_refused(db: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Inbox(db)


@pytest.mark.parametrize("retention", [timedelta(0), timedelta(days=-1), 3600, "7d"])
def test_retention_must_be_a_positive_timedelta(tmp_path: Path, retention: Any) -> None:
    with pytest.raises(ConfigError, match="retention"):
        Inbox(f"sqlite:///{tmp_path / 'x.db'}", retention=retention)


def test_repr_hides_the_password() -> None:
    inbox = Inbox("postgresql+psycopg://app:secret@db/app")
    assert "secret" not in repr(inbox)
    assert "tidings_inbox" in repr(inbox)


async def test_two_handlers_sharing_an_inbox_key_are_refused_when_declared(
    tmp_path: Path, closing: list[Any]
) -> None:
    from tidings import Tidings

    inbox = Inbox(f"sqlite:///{tmp_path / 'ids.db'}")
    closing.append(inbox)
    app = Tidings("memory://", service="t")

    def make() -> Callable[..., Any]:
        async def handler(payload: Any) -> None: ...

        return handler

    app.subscriber("t", group="g", inbox=inbox)(make())
    with pytest.raises(ConfigError, match="share the inbox key"):
        app.subscriber("t", group="g", inbox=inbox)(make())
    app.subscriber("t", group="h", inbox=inbox)(make())  # another group, another key
    with pytest.raises(ConfigError, match=r"inbox=\.\.\.\) takes a tidings\.Inbox"):
        app.subscriber("t", group="g", inbox="sqlite:///x.db")(make())
