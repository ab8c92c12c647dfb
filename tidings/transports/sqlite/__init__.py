"""``sqlite:///path/events.db``: the embedded, durable log in one SQLite file.

One module per concept:

- :mod:`.transport`: :class:`SQLiteTransport`, the URL, topics, appends, reads,
  retention and the operating calls;
- :mod:`.consumer`: :class:`SQLiteConsumer`, a member of a group: partition leases,
  heartbeats, fetches and commits;
- :mod:`.client`: :class:`~.client.LogClient`, the log as the transport and its
  consumers use it (connections, writer, readers, topic ids, wake-ups, leases), and
  ``translate``, where sqlite3's errors become tidings';
- :mod:`.sql`: the schema and the SQL that is not on the append and fetch path;
- :mod:`.writer`: the group-commit writer, every write of a process on one thread;
- :mod:`.wakeup`: cross-process wake-ups (inotify, or a stat poll).
"""

from __future__ import annotations

from tidings.transports.sqlite.consumer import SQLiteConsumer
from tidings.transports.sqlite.sql import SCHEMA
from tidings.transports.sqlite.transport import SQLiteTransport

__all__ = ["SCHEMA", "SQLiteConsumer", "SQLiteTransport"]
