"""Reading the saga store for people: the instances, and one key's state, data,
history and pending deadlines (``tidings sagas list|show``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tidings._sql import make_engine, safe_url, with_psycopg
from tidings.errors import ConfigError, TidingsError
from tidings.sagas._app import SagaApp
from tidings.sagas._tables import DEFAULT_PREFIX, SagaTables, define

__all__ = ["SagaInfo", "list_sagas", "saga_databases", "show_saga"]

STATUSES = ("active", "finished", "failed")


@dataclass(frozen=True)
class SagaInfo:
    """One saga instance; ``history`` and ``deadlines`` only from :func:`show_saga`."""

    name: str
    key: str
    state: str
    status: str
    version: int
    data: dict[str, Any]
    started_at: datetime
    updated_at: datetime
    history: list[dict[str, Any]] = field(default_factory=list)
    deadlines: list[dict[str, Any]] = field(default_factory=list)
    parked: list[dict[str, Any]] = field(default_factory=list)


def saga_databases(app: SagaApp, name: str | None = None) -> list[Engine]:
    """The databases of the sagas ``app`` declares (only of the saga ``name`` if
    given), one engine per URL: what ``tidings sagas --app`` and the dashboard read."""
    found: dict[str, Engine] = {}
    for sub in app.subscribers:
        saga = getattr(sub.handler, "saga", None)
        if saga is not None and (name is None or saga.name == name):
            found.setdefault(str(saga.engine.url), saga.engine)
    return list(found.values())


def _open(db: str | Engine) -> tuple[Engine, bool]:
    if isinstance(db, Engine):
        return db, False
    try:
        url = with_psycopg(sa.make_url(db))
        engine: Engine = make_engine(url, is_async=False)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"cannot open the saga database {db!r}: {exc}") from None
    path = url.database or ":memory:"
    # Connecting to a SQLite file that is not there would create it, empty: a look at a
    # mistyped path must leave nothing behind.
    if url.get_backend_name() == "sqlite" and path != ":memory:" and not Path(path).exists():
        engine.dispose()
        raise TidingsError(f"there is no database at {path} (--db {safe_url(url)})")
    return engine, True


def _read(db: str | Engine, prefix: str, read: Any) -> Any:
    engine, owned = _open(db)
    tables = define(sa.MetaData(), prefix)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(tables.sagas.name):
                raise TidingsError(
                    f"{safe_url(engine)} has no saga table {tables.sagas.name!r}: no saga "
                    "has run on this database (or pass the right --db)"
                )
            return read(conn, tables)
    except sa.exc.SQLAlchemyError as exc:
        raise TidingsError(f"cannot read the sagas in {safe_url(engine)}: {exc}") from None
    finally:
        if owned:
            engine.dispose()


def _info(row: Any) -> SagaInfo:
    m = row._mapping
    return SagaInfo(
        m["name"], m["key"], m["state"], m["status"], m["version"], dict(m["data"] or {}),
        m["started_at"], m["updated_at"],
    )  # fmt: skip


def list_sagas(
    db: str | Engine,
    *,
    name: str | None = None,
    status: str | None = None,
    limit: int = 1000,
    prefix: str = DEFAULT_PREFIX,
) -> list[SagaInfo]:
    """The instances in ``db`` (of saga ``name``, with ``status``), latest first."""
    if status is not None and status not in STATUSES:
        raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")

    def read(conn: Any, t: SagaTables) -> list[SagaInfo]:
        s = t.sagas
        q = sa.select(s)
        if name is not None:
            q = q.where(s.c.name == name)
        if status is not None:
            q = q.where(s.c.status == status)
        q = q.order_by(s.c.updated_at.desc(), s.c.name, s.c.key).limit(limit)
        return [_info(r) for r in conn.execute(q)]

    result: list[SagaInfo] = _read(db, prefix, read)
    return result


def show_saga(
    db: str | Engine, key: str, *, name: str | None = None, prefix: str = DEFAULT_PREFIX
) -> list[SagaInfo]:
    """The instances of ``key`` (one per saga, or of saga ``name``) with their history,
    pending deadlines and parked events; a key with only parked events shows as an
    instance in state ``-``, status ``parked``."""

    def read(conn: Any, t: SagaTables) -> list[SagaInfo]:
        s, h, d, p = t

        def mine(table: sa.Table) -> list[Any]:
            where = [table.c.key == key]
            if name is not None:
                where.append(table.c.name == name)
            return where

        found = {i.name: i for i in map(_info, conn.execute(sa.select(s).where(*mine(s))))}
        history = conn.execute(sa.select(h).where(*mine(h)).order_by(h.c.seq)).mappings()
        deadlines = conn.execute(
            sa.select(d).where(*mine(d), d.c.status == "pending").order_by(d.c.due_at)
        ).mappings()
        parked = conn.execute(
            sa.select(p.c.name, p.c.event_id, p.c.type, p.c.at).where(*mine(p)).order_by(p.c.seq)
        ).mappings()
        for rows, attr in ((history, "history"), (deadlines, "deadlines"), (parked, "parked")):
            for row in rows:
                row = dict(row)
                saga = row["name"]
                if saga not in found:
                    epoch = row.get("at") or row["created_at"]
                    found[saga] = SagaInfo(saga, key, "-", "parked", 0, {}, epoch, epoch)
                for drop in ("name", "key", "seq"):
                    row.pop(drop, None)
                getattr(found[saga], attr).append(row)
        return sorted(found.values(), key=lambda i: i.name)

    result: list[SagaInfo] = _read(db, prefix, read)
    return result
