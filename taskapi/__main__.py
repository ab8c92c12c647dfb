"""``taskapi``: the reference system's command (grows with its own issue)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from taskapi.demo import run_demo

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["demo"]:
        print("usage: taskapi demo [--events N] [--data DIR]", file=sys.stderr)
        return 2
    return run_demo(args[1:])


if __name__ == "__main__":
    sys.exit(main())
