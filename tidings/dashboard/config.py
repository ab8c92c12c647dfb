"""The dashboard's settings, and the rule on where it may listen."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidings.errors import ConfigError

if TYPE_CHECKING:
    from tidings.app import Tidings
    from tidings.shredding import Shredder

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Config", "check_bind"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
PAGE_SIZE = 50  # rows of a paged list (dead letters, events)


@dataclass(frozen=True)
class Config:
    """What a dashboard shows and lets do.

    ``url``: the log. ``token``: asked of every request when set (a cookie after the
    login form, or ``Authorization: Bearer``), and needed for every action.
    ``read_only``: no action at all (no form is shown, every POST refused).
    ``shredder``: the key store, for ``?reveal=1`` (personal fields in clear); without
    it personal fields are always masked. ``outbox_db``/``outbox_table``: an outbox
    whose backlog the overview shows. ``sagas_db``: databases whose sagas the sagas
    pages show (as ``tidings sagas --db``). ``service``: a :class:`~tidings.Tidings`
    app whose sagas (as ``tidings sagas --app``) and projections (as ``tidings
    projections status``) the pages show.
    """

    url: str
    token: str | None = None
    read_only: bool = False
    shredder: Shredder | None = None
    outbox_db: str | None = None
    outbox_table: str | None = None
    page_size: int = PAGE_SIZE
    sagas_db: tuple[str, ...] = ()
    service: Tidings | None = None

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 16:
            raise ConfigError(
                "the dashboard's token must be at least 16 characters long; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )
        if not 1 <= self.page_size <= 1000:
            raise ConfigError(f"page_size={self.page_size} must be between 1 and 1000")


def check_bind(host: str, *, token: str | None, read_only: bool) -> None:
    """Refuse (ConfigError) to listen on anything but a loopback address without a
    token or read-only mode: the dashboard can replay, purge and move offsets."""
    if _loopback(host) or token is not None or read_only:
        return
    raise ConfigError(
        f"the dashboard would listen on {host}, reachable from other machines, with no "
        "token: anyone there could replay, purge and reset offsets. Give --token T (or "
        "$TIDINGS_DASHBOARD_TOKEN), or --read-only, or keep the default --host 127.0.0.1"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
