"""Issue 22: CPU per ``Shredder.seal`` and ``Shredder.open`` of ``fig_personal``'s
payload (two personal fields of one subject), warm key cache (decision 0038).

    .venv/bin/python -m bench.fig_seal [--against OTHER/tidings/shredding/fields.py]

Prints microseconds of CPU (``time.process_time``, so a busy machine's waits do not
count) per operation: the minimum over ``--rounds`` rounds of ``--number`` calls.
With ``--against``, that file's ``Shredder`` (another checkout's, e.g. main's) is
measured in the same process on the same key store, the two taking turns each round,
and the ratio this/other is printed (below 1: this tree's is cheaper). Each side opens
what it sealed, and this tree's also what the other sealed (an older form must still
open), so a format mismatch fails here rather than passing as a speed-up.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.fig_personal import MASTER_KEY, Marked
from tidings.shredding import SqlKeyStore
from tidings.shredding.fields import Shredder


def load_other(path: str) -> Any:
    """The module at ``path`` (a ``tidings/shredding/fields.py``), under a name of its
    own: its imports of the rest of tidings resolve to this tree."""
    spec = importlib.util.spec_from_file_location("_other_fields", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--against {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_us(call: Callable[[], object], number: int) -> float:
    """Microseconds of CPU per call, the best of three runs of ``number`` calls."""
    best = min(timeit.repeat(call, number=number, repeat=3, timer=time.process_time))
    return best / number * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="another checkout's tidings/shredding/fields.py")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.number < 1:
        parser.error("--rounds and --number must be at least 1")
    folder = tempfile.mkdtemp(prefix="fig_seal-")
    keys = SqlKeyStore(f"sqlite:///{os.path.join(folder, 'keys.db')}", master_key=MASTER_KEY)
    sides: dict[str, Any] = {"this": Shredder(keys)}
    if args.against:
        sides["other"] = load_other(args.against).Shredder(keys)
    payload = Marked(order_id="o-1", customer_id="c-1", email="c-1@example.com", amount_cents=5)
    event_id = str(uuid.uuid4())
    sealed = {name: s.seal(event_id, payload) for name, s in sides.items()}
    clear = payload.model_dump(mode="json")
    for name, s in sides.items():
        for made_by, data in sealed.items():
            if (name, made_by) == ("other", "this"):
                continue  # an older tree need not read a newer form
            if s.open(event_id, data) != clear:
                raise SystemExit(f"{name}'s open does not read what {made_by} sealed")
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, s in sides.items():
            ops: dict[str, Callable[[], object]] = {
                "seal": partial(s.seal, event_id, payload),
                "open": partial(s.open, event_id, sealed[name]),
            }
            for op, call in ops.items():
                took = cpu_us(call, args.number)
                best[(name, op)] = min(best.get((name, op), took), took)
    load = os.getloadavg()[0]
    print(
        f"CPU us per operation, min of {args.rounds} rounds x 3 x {args.number} (load {load:.1f})"
    )
    for op in ("seal", "open"):
        line = f"{op}: this {best[('this', op)]:.2f} us"
        if "other" in sides:
            ratio = best[("this", op)] / best[("other", op)]
            line += f", other {best[('other', op)]:.2f} us, this/other {ratio:.2f}"
        print(line)
    if "other" in sides:
        both = [sum(best[(name, op)] for op in ("seal", "open")) for name in ("this", "other")]
        print(f"seal+open: this {both[0]:.2f} us, other {both[1]:.2f} us, this/other "
              f"{both[0] / both[1]:.2f}")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
