"""Operating a log: the library behind ``tidings topics|groups|publish|tail|offsets``
(and ``tidings topics delete``).

Each function takes a started transport (or, to publish, a started Tidings app) and
returns data; ``tidings.cli`` only parses arguments and prints. ``tidings publish``
checks each event against the log's schema registry (:class:`PublishCheck`).
``tidings groups`` judges each group's lag health by Burrow's rules (:class:`LagStatus`,
:func:`lag_health`; :func:`status` is a group's status alone, for a metric).
:func:`record_action` keeps an operator's action (the dashboard's replays, purges,
resets) as an event on :data:`ADMIN_TOPIC`; :func:`recent_actions` reads them back.

A position in a topic is ``earliest``, ``latest``, a time (ISO-8601, UTC unless it has
an offset, or an age such as ``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``) or, for
offset resets, an offset that applies to every partition.
"""

from __future__ import annotations

from tidings.admin.actions import (
    ADMIN_ACTION_TYPE,
    ADMIN_TOPIC,
    Action,
    recent_actions,
    record_action,
)
from tidings.admin.checking import PublishCheck, publish_check
from tidings.admin.dead_letters import dead_letter_filter
from tidings.admin.health import health_json, lag_health, partition_health, partition_samples
from tidings.admin.offsets import OffsetChange, reset_offsets
from tidings.admin.positions import (
    Position,
    parse_age,
    parse_position,
    parse_time,
    resolve_start,
    topic_info,
)
from tidings.admin.publishing import (
    CLI_SOURCE,
    build_event,
    check_publish_topic,
    parse_publish_lines,
    publish,
    publish_line,
)
from tidings.admin.topics import (
    GROUP_JSON_KEYS,
    GROUP_TOPIC_JSON_KEYS,
    GroupStatus,
    GroupTopic,
    Lag,
    check_topic_deletable,
    dead_letter_counts,
    delete_topic,
    describe_group,
    group_row_json,
    group_rows,
    group_topic_json,
    group_topics,
    is_internal,
    live_readers,
    partition_lag,
    size_text,
    topic_json,
    topic_rate,
    topic_rows,
)
from tidings.lag_health import GroupHealth, Health, LagStatus, LagWindows, Rules, evaluate, status

__all__ = [
    "ADMIN_ACTION_TYPE",
    "ADMIN_TOPIC",
    "CLI_SOURCE",
    "GROUP_JSON_KEYS",
    "GROUP_TOPIC_JSON_KEYS",
    "Action",
    "GroupHealth",
    "GroupStatus",
    "GroupTopic",
    "Health",
    "Lag",
    "LagStatus",
    "LagWindows",
    "OffsetChange",
    "Position",
    "PublishCheck",
    "Rules",
    "build_event",
    "check_publish_topic",
    "check_topic_deletable",
    "dead_letter_counts",
    "dead_letter_filter",
    "delete_topic",
    "describe_group",
    "evaluate",
    "group_row_json",
    "group_rows",
    "group_topic_json",
    "group_topics",
    "health_json",
    "is_internal",
    "lag_health",
    "live_readers",
    "parse_age",
    "parse_position",
    "parse_publish_lines",
    "parse_time",
    "partition_health",
    "partition_lag",
    "partition_samples",
    "publish",
    "publish_check",
    "publish_line",
    "recent_actions",
    "record_action",
    "reset_offsets",
    "resolve_start",
    "size_text",
    "status",
    "topic_info",
    "topic_json",
    "topic_rate",
    "topic_rows",
]
