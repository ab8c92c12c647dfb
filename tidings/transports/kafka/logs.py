"""librdkafka's own log, routed into Python logging instead of stderr.

Left alone, librdkafka writes every line to stderr: against a URL with no broker behind
it, ``tidings topics`` printed 682 to 944 lines (one per connection attempt of each
client) before its one-line error. Every client the adapter makes (the producer, the
admin client, the reader and each group member) is given a :class:`ClientLog` as
confluent-kafka's ``logger`` (:meth:`KafkaConfig.common
<tidings.transports.kafka.config.KafkaConfig.common>`), so its lines go to the Python
logger ``tidings.kafka.librdkafka``:

- at DEBUG, whatever librdkafka's own level (named in the message): quiet by default,
  shown with ``TIDINGS_LOG_LEVEL=DEBUG`` (the CLI) or by setting that logger's level.
  What matters to an operator reaches them as tidings' own errors and warnings (a start
  with no broker answering, a group member's error events);
- once per distinct message (durations left out of the comparison, as are the clients'
  names): a message met again is logged again only ``REPEAT_AFTER`` seconds later,
  with how many times it came meanwhile.

confluent-kafka hands a client's log lines over when that client is polled (the
producer's poll thread, a member's polling thread, the reader's consume, and the admin
client after each of its requests), never from librdkafka's own threads.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LOGGER", "REPEAT_AFTER", "ClientLog", "Deduplicated"]

LOGGER = "tidings.kafka.librdkafka"
REPEAT_AFTER = 60.0  # seconds before a message already logged is logged again
MAX_DISTINCT = 1024  # messages remembered; beyond, the memory starts afresh
# Durations vary between otherwise equal lines ("(after 0ms in state CONNECT)").
_DURATION = re.compile(r"\d+ ?ms\b")
# The thread a line was written on ("[thrd:127.0.0.1:9092/bootstrap]: "), of no use in
# a sentence for a person.
_THREAD = re.compile(r"^\[thrd:[^\]]*\]: ")


class Deduplicated:
    """The sink of every client's lines: each distinct message is logged at DEBUG on
    ``logger`` once per ``repeat_after`` seconds. Thread-safe: clients are polled on
    several threads."""

    def __init__(
        self,
        logger: logging.Logger,
        repeat_after: float = REPEAT_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.repeat_after = repeat_after
        self.clock = clock
        # message key -> (when it was last logged, times it came since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def emit(self, level: int, facility: str, client: str, text: str) -> None:
        if not self.logger.isEnabledFor(logging.DEBUG):
            return
        key = (facility, _DURATION.sub("Nms", text))
        now = self.clock()
        with self._lock:
            last, skipped = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.repeat_after:
                self._seen[key] = (last, skipped + 1)
                return
            if len(self._seen) >= MAX_DISTINCT:
                self._seen.clear()
            self._seen[key] = (now, 0)
        again = f" (and {skipped} more time(s) since it was last logged)" if skipped else ""
        self.logger.debug(
            "librdkafka %s %s [%s]: %s%s",
            logging.getLevelName(level).lower(),
            facility,
            client,
            text,
            again,
        )


SINK = Deduplicated(logging.getLogger(LOGGER))


class ClientLog:
    """What one librdkafka client is given as confluent-kafka's ``logger``: its lines
    go to :data:`SINK`, and the last one at warning level or above is kept
    (``problem``), for an error message to say what librdkafka met."""

    __slots__ = ("problem", "sink")

    def __init__(self, sink: Deduplicated | None = None) -> None:
        self.sink = SINK if sink is None else sink
        self.problem: str | None = None

    def log(self, level: int, msg: str, *args: Any) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client name, line),
        # its level a Python one, inside the client's poll: whatever this raised would be
        # raised by that poll, and end a group member's polling thread (ConsumerDead).
        with contextlib.suppress(Exception):
            if len(args) == 3:
                facility, client, text = (str(a) for a in args)
            else:
                facility, client, text = "LOG", "?", msg % args if args else msg
            text = _THREAD.sub("", text)
            if level >= logging.WARNING:
                self.problem = text
            self.sink.emit(level, facility, client, text)
