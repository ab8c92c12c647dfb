"""Listening sockets and the uvicorn server for the parts that serve HTTP (the API, the
webhook receiver)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import socket
from collections.abc import Iterator

import uvicorn

__all__ = ["ListenError", "Server", "listen", "port"]


class ListenError(Exception):
    """A port could not be bound; the message says what to do."""


def port(text: str) -> int:
    """argparse type of a port option (0 picks any free port)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0 = any free port), got {text!r}")
    return int(text)


def listen(host: str, number: int, option: str = "--port") -> socket.socket:
    """A TCP socket bound to ``host:number``, ready to hand to a server.

    Bound here rather than by the server so that a busy port is one clear line (uvicorn
    logs a traceback and calls sys.exit). ``option`` names the flag that changes it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # TCP_NODELAY on the listening socket (accepted sockets inherit it on Linux), and
    # IPPROTO_TCP so that asyncio, which sets it only on sockets of that proto, does
    # too: with Nagle on and delayed ACKs a response written in two pieces waited
    # ~40 ms (measured: 44 ms per webhook POST, 2 ms with TCP_NODELAY set here).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # As uvicorn does: a restart may bind while old connections are in TIME_WAIT;
        # a port another socket listens on still refuses the bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, number))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"port {number} on {host} is already in use (is it already running?); stop "
                f"what holds it or choose another port with {option} N (0 = any free port)"
            ) from None
        reason = exc.strerror or exc
        raise ListenError(f"cannot listen on {host}:{number} ({reason}); try {option} 0") from None
    sock.setblocking(False)
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, leaving SIGTERM/SIGINT to its caller: after a graceful stop
    uvicorn re-raises the signal under the previous handler, which would end the
    process by the signal instead of exit code 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
