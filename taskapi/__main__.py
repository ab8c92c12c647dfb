"""``taskapi``: the reference system's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import tidings.logs
from tidings import ConfigError, TidingsError

USAGE = """\
usage: taskapi COMMAND [options]

  demo                  the whole system on the embedded log, with local sinks (Ctrl-C stops)
  api                   the Task API, with its outbox relay
  service NAME          one service: email, slack, push, audit, reminders, task-board or
                        escalation
  sinks                 the local SMTP sink and webhook receiver
  audit verify [DIR]    check the audit files' keyed chain and the checkpoints in the log
  reminders             list the pending reminders
  board rebuild|status  rebuild the task board from the log while it serves, or show it

Every command takes --data DIR (default ./taskapi-data, or $TASKAPI_DATA); the log is
$TIDINGS_URL (default the SQLite file DIR/events.db). 'taskapi COMMAND --help' for more.
"""


def service_main(argv: Sequence[str]) -> int:
    from taskapi.services import SERVICES, serve
    from taskapi.settings import Settings

    parser = argparse.ArgumentParser(prog="taskapi service")
    parser.add_argument("name", choices=SERVICES, help="which service")
    parser.add_argument("--data", help="the data folder (default $TASKAPI_DATA or ./taskapi-data)")
    parser.add_argument("--log-level", default="INFO", help="logging level (%(default)s)")
    parser.add_argument(
        "--log-format", choices=tidings.logs.FORMATS, default="text", help="(%(default)s)"
    )
    args = parser.parse_args(argv)
    # Each line names the event it is about (group, topic, partition, offset, ids).
    tidings.logs.configure(args.log_format, args.log_level)
    settings = Settings.from_env(args.data)

    def ready(app: object) -> None:
        print(f"service {args.name} running (group {args.name}) on {settings.tidings_url}")
        sys.stdout.flush()

    asyncio.run(serve(args.name, settings, on_ready=ready))
    return 0


def reminders_main(argv: Sequence[str]) -> int:
    from datetime import UTC, datetime

    from taskapi.db import make_engine
    from taskapi.services.reminders import metadata, pending
    from taskapi.settings import Settings

    parser = argparse.ArgumentParser(prog="taskapi reminders")
    parser.add_argument("--data", help="the data folder (default $TASKAPI_DATA or ./taskapi-data)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(args.data)
    engine = make_engine(settings.state_db("reminders"))
    metadata.create_all(engine)
    rows = pending(engine)
    engine.dispose()
    if not rows:
        print("no pending reminders")
    for row in rows:
        at = datetime.fromtimestamp(float(row["remind_at"]), UTC)  # type: ignore[arg-type]
        print(f"{at:%Y-%m-%d %H:%M:%S} UTC  task {row['task_id']}  {row['title']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    try:
        if command == "demo":
            from taskapi.demo import main as demo_main

            return demo_main(rest)
        if command == "api":
            from taskapi.api import main as api_main

            return api_main(rest)
        if command == "service":
            return service_main(rest)
        if command == "sinks":
            from taskapi.sinks import main as sinks_main

            return sinks_main(rest)
        if command == "audit" and rest[:1] == ["verify"]:
            from taskapi.audit_verify import verify_main

            return verify_main(rest[1:])
        if command == "reminders":
            return reminders_main(rest)
        if command == "board":
            from taskapi.board import main as board_main

            return board_main(rest)
    except (ConfigError, TidingsError) as exc:
        print(f"taskapi {command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if command in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr, end="")
    if command:
        print(f"taskapi: unknown command {' '.join(args[:2])!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
