"""Wake-ups for readers of the SQLite log: this process's commits, and other
processes' through inotify on Linux, stat polling elsewhere.

A commit by any process writes the database's WAL file; watching that file's folder
lets a reader in another process wake within a millisecond instead of polling the
database. Where inotify is missing, a cheap ``os.stat`` poll stands in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
import sys
from collections.abc import Callable

__all__ = ["AppendSignal", "FileWatcher"]

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_HEADER = struct.Struct("iIII")


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1  # noqa: B018 - probe that the symbol exists
        return libc
    except (OSError, AttributeError):
        return None


class FileWatcher:
    """Calls ``on_change`` (in the event loop) when files named ``prefix*`` in
    ``folder`` are written. ``polling`` tells whether the stat fallback is in use."""

    POLL_INTERVAL = 0.005

    def __init__(self, folder: str, prefix: str, on_change: Callable[[], None]) -> None:
        self.folder = folder
        self.prefix = prefix.encode()
        self.on_change = on_change
        self._fd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polling = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        libc = _libc()
        if libc is not None:
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
                if libc.inotify_add_watch(fd, os.fsencode(self.folder), mask) >= 0:
                    self._fd = fd
                    self._loop.add_reader(fd, self._readable)
                    return
                os.close(fd)
        self.polling = True
        self._poller = self._loop.create_task(self._poll())

    def _readable(self) -> None:
        assert self._fd is not None
        changed = False
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            pos = 0
            while pos + _HEADER.size <= len(buf):
                _, _, _, length = _HEADER.unpack_from(buf, pos)
                name = buf[pos + _HEADER.size : pos + _HEADER.size + length]
                if name.startswith(self.prefix):
                    changed = True
                pos += _HEADER.size + length
        if changed:
            self.on_change()

    def _signature(self) -> tuple[int, ...]:
        sig: list[int] = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(os.path.join(self.folder, self.prefix.decode() + suffix))
                sig += [st.st_mtime_ns, st.st_size]
            except OSError:
                sig += [0, 0]
        return tuple(sig)

    async def _poll(self) -> None:
        last = self._signature()
        while True:
            await asyncio.sleep(self.POLL_INTERVAL)
            now = self._signature()
            if now != last:
                last = now
                self.on_change()

    def stop(self) -> None:
        if self._fd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None


class AppendSignal:
    """Tells readers that something may have been appended to the log at ``path``.

    :meth:`notify` runs after each commit of this process; the :class:`FileWatcher`,
    started by the first reader that waits (:meth:`watch`), calls it for other
    processes' commits. A reader takes :attr:`event` *before* it reads, then waits
    on that one: a commit in between has set it already.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.event = asyncio.Event()
        self.watcher: FileWatcher | None = None

    def notify(self) -> None:
        old, self.event = self.event, asyncio.Event()
        old.set()

    def watch(self) -> None:
        """Start watching the file for other processes' commits (once)."""
        if self.watcher is None:
            folder = os.path.dirname(os.path.abspath(self.path))
            self.watcher = FileWatcher(folder, os.path.basename(self.path), self.notify)
            self.watcher.start()

    async def wait(self, timeout: float) -> None:
        """Return when something may have been appended, or after ``timeout``, or
        sooner (0.5 s; one poll interval while polling) so that the caller looks again."""
        self.watch()
        event = self.event
        recheck = FileWatcher.POLL_INTERVAL if self.watcher and self.watcher.polling else 0.5
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), min(timeout, recheck))

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
