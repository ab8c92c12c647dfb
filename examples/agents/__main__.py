"""``python -m examples.agents demo|standin``: the research pipeline of docs/agents.md."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading

from examples.agents import demo
from examples.agents.settings import Settings
from examples.agents.standin import DEMO_FAULTS, NO_FAULTS, Server


class Brief(logging.Formatter):
    """Log lines without tracebacks: a retried 429 is news, its stack is not."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.agents")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="run the pipeline on a few questions, then exit")
    run.add_argument("--no-faults", action="store_true", help="a stand-in that never fails")
    run.add_argument("--verbose", action="store_true", help="log tracebacks too")
    serve = commands.add_parser("standin", help="serve the stand-in model API until Ctrl-C")
    serve.add_argument("--port", type=int, default=8088, help="0: any free port")
    serve.add_argument("--no-faults", action="store_true")
    args = parser.parse_args(argv)
    faults = NO_FAULTS if args.no_faults else DEMO_FAULTS
    if args.command == "standin":
        # Ctrl-C or SIGTERM sets an event, from the moment the server is asked for: a
        # KeyboardInterrupt could land anywhere, even before a try meant to catch it.
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with Server(faults, port=args.port) as server:
            print(f"the stand-in serves {server.url} (Ctrl-C stops it)", flush=True)
            while server.thread.is_alive() and not stop.wait(0.5):
                pass
        return 0
    handler = logging.StreamHandler()
    if not args.verbose:
        handler.setFormatter(Brief())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    report = asyncio.run(demo.run(Settings.from_env(), faults))
    print()
    for rid, outcome in report.outcomes.items():
        print(f"{rid}: {outcome}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
