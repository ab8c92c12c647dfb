"""The soak of issue 15, on any log: three groups of two worker processes each, a
random worker SIGKILLed (and replaced at once, as a supervisor would) at a fixed
interval while 20,000 events of 50 keys flow, then a forced reset of one group to the
earliest offset through the real CLI (``python -m tidings offsets reset GROUP --to
earliest --topic proc-events --force --url URL``) while events still flow.

Checked from the workers' record files (``apps/recorder.py``):

- nothing lost: every group handled every event published;
- per-key order (:func:`order_violations`): no group handled an event before every
  earlier event of its key had been handled by it;
- the replay: the reset group handled again, after the reset began, every event
  published before it;
- the log agrees: each group's lag is 0 at the end.

Duplicates are counted and printed, not forbidden: a SIGKILLed worker's handled but
uncommitted events are handled again by design (at-least-once). They are counted per
era (before the reset began, after it), so the replay asked for is not among them.

Where it runs:

- ``sqlite``: in the test suite, ``tests/transports/test_sqlite_soak.py`` (20 s of
  kills, ``TIDINGS_SOAK_SECONDS`` for more); and by the command below.
- ``nats`` (a 3-node nats-server cluster, streams and the groups bucket with 3
  replicas) and ``kafka`` (Tansu): by the command below only, never by pytest (a run
  costs minutes of broker time). Each starts and stops its own servers through
  ``devservers``, on 127.0.0.1.

    python -m tests.transports.soak --transport nats --seconds 60

It prints the counts and exits 1 on a violation (with the first violations and the
tail of the workers' logs), 2 when the run could not be made.

Kafka differs on the reset: Kafka refuses to move the offsets of a group with members
in other processes, and ``--force`` moves only members in the CLI's own process
(docs/kafka.md, "Start and seeks"). When the CLI refuses, the soak stops that group's
workers with SIGTERM, resets, and starts two again (events still flowing).
``--reset stopped`` does that without trying the live reset first, on any transport.
(On Tansu 0.6.0 the live reset was not refused: during a rebalance DescribeGroups
gives a state confluent-kafka reads as UNKNOWN, which the transport does not count as
busy; the CLI exited 0 and nothing was replayed, 2 runs of 2.) Tansu joins take about
a second at the 2 s session timeout used here (docs/kafka.md, difference 4), so kills
there are seconds apart (``--kill-every``; the default per transport is in
``KILL_EVERY``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.transports.worker_processes import (
    ROOT,
    Keys,
    WorkerProcesses,
    order_violations,
    wait_for_jetstream,
)
from tidings import Tidings

TOPIC = "proc-events"  # apps/recorder.py subscribes to it
PARTITIONS = 8
GROUPS = ("g1", "g2", "g3")
RESET_GROUP = "g1"
EVENTS = 20_000
KEYS = 50
# Seconds between SIGKILLs, per transport: SQLite takes a dead member's partitions
# after its lease (2 s here); NATS after its lease (2 s) too, a new member waiting one
# lease before it takes a dead one's; Tansu needs a rebalance of ~1 s per join and per
# expiry (2 s session), and a SIGKILL in the middle of one may strand the group
# (docs/kafka.md, difference 6).
KILL_EVERY = {"sqlite": 0.5, "nats": 0.5, "kafka": 4.0}
LEASE = 2.0
DRAIN = 240.0  # seconds to wait, after the last event, for every group to catch up
STALL = 45.0  # ... unless nothing moved for this long


@dataclass
class Plan:
    transport: str
    seconds: float  # how long the kills go on
    kill_every: float
    events: int = EVENTS
    keys: int = KEYS
    workers: int = 2  # per group
    seed: int = 15
    # "live": the forced reset with the group's workers running; "stopped": stop them
    # (SIGTERM), reset, start them again.
    reset: str = "live"
    # Kafka only: when the forced reset of live workers is refused (docs/kafka.md),
    # do it "stopped".
    stop_to_reset: bool = False


@dataclass
class Result:
    plan: Plan
    kills: int = 0
    events: int = 0
    published_before_reset: int = 0
    replayed: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    out_of_order: list[str] = field(default_factory=list)
    not_replayed: int = 0
    reset: str = ""  # how the reset went
    exited: list[str] = field(default_factory=list)  # workers that died on their own
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the log said around the reset
    took: float = 0.0

    def summary(self) -> str:
        p = self.plan
        return (
            f"soak on {p.transport}: {p.seconds:.0f}s of kills every {p.kill_every:g}s, "
            f"{self.kills} SIGKILLs, {self.events} events over {p.keys} keys, "
            f"{len(GROUPS)} groups x {p.workers} workers; "
            f"lost {sum(self.lost.values())} ({_per_group(self.lost)}), "
            f"{len(self.out_of_order)} out of order; reset of {RESET_GROUP} "
            f"({self.reset}): {self.replayed} of {self.published_before_reset} events "
            f"published before it handled again, {self.not_replayed} not; handled twice "
            f"beyond the replay: {_per_group(self.duplicates)}; workers that exited on "
            f"their own: {len(self.exited)}; {self.took:.0f}s in all"
            + "".join(f"\n  {n}" for n in self.notes)
        )


def _per_group(counts: dict[str, int]) -> str:
    return ", ".join(f"{g} {counts.get(g, 0)}" for g in GROUPS)


class Soak(WorkerProcesses):
    """Recorder workers of three groups on one log (``url``), a publisher in this
    process; every worker is stopped by its PID at the end."""

    def __init__(self, folder: Path, url: str) -> None:
        super().__init__(folder, url)
        self.app = Tidings(url, service="soak")
        self.workers: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}  # live ones
        self.published: list[str] = []  # ids, once acknowledged
        self.reset_returned = 0  # monotonic ns when a reset by the CLI last succeeded

    def start(self, group: str) -> None:
        proc = self.spawn(
            {
                "RECORDER_GROUPS": ",".join(GROUPS),
                "RECORDER_SLEEP": "~0.002",
                "RECORDER_SLOW_SHARE": "0.2",
                "RECORDER_SYNC": "0",
            },
            ["--group", group],
        )
        self.workers[proc.pid] = (group, proc)

    def kill(self, pid: int) -> str:
        group, proc = self.workers.pop(pid)
        self.send(proc, signal.SIGKILL)
        return group

    def replace_exited(self, result: Result) -> None:
        """Start a worker again for each that exited without being signalled."""
        for pid, (group, proc) in list(self.workers.items()):
            if proc.poll() is not None:
                del self.workers[pid]
                tail = self.log(proc)[-1500:]
                result.exited.append(f"pid {pid} ({group}) exit {proc.returncode}:\n{tail}")
                self.start(group)

    async def publish(self, items: Iterable[tuple[str, int]]) -> list[str]:
        events = [
            self.app.build({"key": key, "seq": seq}, type="test.happened", subject=key)
            for key, seq in items
        ]
        await self.app.publish_events(TOPIC, events)
        self.published += [e.id for e in events]
        return [e.id for e in events]

    async def lag(self, group: str) -> int | None:
        """The group's lag on TOPIC (None: no rows yet)."""
        for info in await self.app.transport.groups():
            if info.group == group:
                rows = [p for p in info.partitions if p.topic == TOPIC]
                return sum(p.lag for p in rows) if len(rows) == PARTITIONS else None
        return None

    async def position(self, group: str) -> str:
        """The group's committed offsets on TOPIC, summed, and its lag (for the notes);
        on Kafka also the group's state as the broker describes it."""
        text = "?"
        with contextlib.suppress(Exception):
            for info in await self.app.transport.groups():
                if info.group == group:
                    rows = [p for p in info.partitions if p.topic == TOPIC]
                    done = sum(p.committed or 0 for p in rows)
                    text = f"committed {done}, lag {sum(p.lag for p in rows)}"
        describe = getattr(self.app.transport, "_describe", None)  # Kafka's
        if describe is not None:
            with contextlib.suppress(Exception):
                text += f", state {(await describe(group)).state.name}"
        return text

    async def cli_reset(self, timeout: float = 60.0) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidings", "offsets", "reset", RESET_GROUP,
            "--to", "earliest", "--topic", TOPIC, "--force", "--url", self.url,
            cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, f"no answer within {timeout:.0f}s"
        assert proc.returncode is not None
        if proc.returncode == 0:
            self.reset_returned = time.monotonic_ns()
        return proc.returncode, err.decode(errors="replace").strip()

    def logs_tail(self, chars: int = 1200) -> str:
        return "\n".join(
            f"--- worker pid {p.pid} (exit {p.poll()}):\n{self.log(p)[-chars:]}"
            for p in self.procs[-8:]
        )


async def steady(soak: Soak, plan: Plan, stop: asyncio.Event, seconds: float) -> list[str]:
    """Publish ``plan.events`` events in batches of 50, spread evenly over ``seconds``."""
    ids: list[str] = []
    keys = Keys(plan.keys)
    started = time.monotonic()
    step = seconds / (plan.events / 50)
    while len(ids) < plan.events and not stop.is_set():
        ids += await soak.publish(keys.take(50))
        await asyncio.sleep(max(0.0, started + step * len(ids) / 50 - time.monotonic()))
    return ids


async def _reset(soak: Soak, plan: Plan, result: Result) -> None:
    """The forced reset of RESET_GROUP through the CLI, its workers alive
    (``plan.reset == "live"``); or, with ``"stopped"`` (and on Kafka when the live one
    is refused, as documented), with its workers stopped by SIGTERM and started again
    after it. Notes what the log said of the group around it."""
    if plan.reset == "stopped":
        await _reset_stopped(soak, plan, result, "its workers stopped first (--reset stopped)")
        return
    code, err = await _noted(soak, result)
    if code != 0 and not plan.stop_to_reset:
        # A failure is a violation, named; the reset is tried again (as its error may
        # say to), at most twice, so that the replay is still checked.
        for attempt in (1, 2, 3):
            result.violations.append(f"forced reset, attempt {attempt}: exit {code}: {err[-800:]}")
            if attempt == 3:
                break
            await asyncio.sleep(1.0)
            code, err = await soak.cli_reset()
            if code == 0:
                result.reset = f"forced, its workers alive, at attempt {attempt + 1}"
                return
        result.reset = "failed 3 times"
        return
    if code == 0:
        result.reset = "forced, its workers alive"
        return
    refusal = err.splitlines()[-1] if err else f"exit {code}"
    print(f"forced reset of live workers refused, as documented: {refusal}", flush=True)
    await _reset_stopped(soak, plan, result, "--force refused while workers ran elsewhere")


async def _noted(soak: Soak, result: Result) -> tuple[int, str]:
    """Run the CLI reset; note the group's position before, as it returned, 3 s later."""
    before = await soak.position(RESET_GROUP)
    code, err = await soak.cli_reset()
    after = await soak.position(RESET_GROUP)
    await asyncio.sleep(3.0)
    result.notes.append(
        f"{RESET_GROUP} on {TOPIC}: {before} before the reset; {after} as the CLI "
        f"returned (exit {code}); {await soak.position(RESET_GROUP)} 3s later"
    )
    return code, err


async def _reset_stopped(soak: Soak, plan: Plan, result: Result, why: str) -> None:
    mine = [pid for pid, (g, _) in soak.workers.items() if g == RESET_GROUP]
    for pid in mine:
        _, proc = soak.workers.pop(pid)
        soak.send(proc, signal.SIGTERM)
    for pid in mine:
        proc = next(p for p in soak.procs if p.pid == pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 60)
        if proc.poll() is None:
            result.violations.append(f"worker {pid} still ran 60s after SIGTERM")
            proc.kill()
    # Members of workers SIGKILLed last stay in the group until their session ends.
    deadline = time.monotonic() + 60
    tries = 0
    while True:
        tries += 1
        code, err = await soak.cli_reset()
        if code == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    result.notes.append(
        f"{RESET_GROUP} on {TOPIC} after the reset of the stopped group: "
        f"{await soak.position(RESET_GROUP)}"
    )
    if code != 0:
        result.violations.append(f"the reset of the stopped group failed: {err[-800:]}")
        result.reset = f"{why}; the reset of the stopped group failed {tries}x"
    else:
        result.reset = (
            f"{why}; workers stopped (SIGTERM), reset at try {tries}, {plan.workers} started again"
        )
    for _ in range(plan.workers):
        soak.start(RESET_GROUP)


async def run(soak: Soak, plan: Plan) -> Result:
    """The soak on ``soak``'s log (TOPIC created, the app started): returns the counts
    and the violations found."""
    result = Result(plan)
    began = time.monotonic()
    rng = random.Random(plan.seed)
    for group in GROUPS:
        for _ in range(plan.workers):
            soak.start(group)
    stop = asyncio.Event()
    publisher = asyncio.create_task(steady(soak, plan, stop, plan.seconds + 3))
    reset_started = reset_done = 0
    reset_ok = False
    before: set[str] = set()
    try:
        deadline = time.monotonic() + plan.seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(plan.kill_every)
            soak.replace_exited(result)
            soak.start(soak.kill(rng.choice(sorted(soak.workers))))
            result.kills += 1
        if publisher.done():
            result.violations.append("the events stopped flowing before the reset")
        before = set(soak.published)  # acknowledged before the reset began
        reset_started = time.monotonic_ns()
        await _reset(soak, plan, result)
        reset_done = soak.reset_returned or time.monotonic_ns()
        reset_ok = result.reset.startswith("forced") or result.reset.endswith("started again")
        ids = await publisher  # the rest, after the reset
    finally:
        stop.set()
        ids = await publisher
    published = set(ids)
    result.events = len(ids)
    result.published_before_reset = len(before)

    # Drain: until every group has handled every event and the reset group everything
    # published before the reset again; then until the log says lag 0.
    def missing() -> dict[str, set[str]]:
        lines = soak.lines()
        out = {g: published - {x.id for x in lines if x.group == g} for g in GROUPS}
        again = {x.id for x in lines if x.group == RESET_GROUP and x.t > reset_started}
        out["replay"] = before - again if reset_ok else set()
        return out

    drained = time.monotonic() + DRAIN
    gone = missing()  # "replay": what the reset group has not handled again
    # Until DRAIN, or STALL seconds in which no worker handled anything more.
    seen, still = -1, time.monotonic()
    while any(gone.values()) and time.monotonic() < drained:
        soak.replace_exited(result)
        await asyncio.sleep(1.0)  # a look reads every record file
        gone = missing()
        count = sum(map(len, gone.values()))
        if count != seen:
            seen, still = count, time.monotonic()
        elif time.monotonic() - still > STALL:
            break
    lags: dict[str, int | None] = {}
    settled = time.monotonic() + 30  # commits follow handling within a commit interval
    while time.monotonic() < settled:
        lags = {g: await soak.lag(g) for g in GROUPS}
        if all(n == 0 for n in lags.values()):
            break
        soak.replace_exited(result)
        await asyncio.sleep(0.5)

    if not reset_ok:  # not waited for: counted now
        lines = soak.lines()
        again = {x.id for x in lines if x.group == RESET_GROUP and x.t > reset_started}
        gone["replay"] = before - again
    lines = soak.lines()
    for group in GROUPS:
        result.lost[group] = len(gone[group])
        if gone[group]:
            first = sorted(x for x in gone[group])[:3]
            result.violations.append(
                f"group {group}: {len(gone[group])} of {len(published)} events never "
                f"handled (e.g. {first})"
            )
        mine = [x for x in lines if x.group == group]
        # Counted apart before and after the reset (the CLI's exit): the replay asked for
        # is not a duplicate.
        eras = Counter((x.id, group == RESET_GROUP and x.t > reset_done) for x in mine)
        result.duplicates[group] = sum(n - 1 for n in eras.values())
    result.not_replayed = len(gone["replay"])
    result.replayed = len(before) - result.not_replayed
    if gone["replay"]:
        result.violations.append(
            f"the reset group {RESET_GROUP} did not handle {len(gone['replay'])} of the "
            f"{len(before)} events published before the reset again"
        )
    result.out_of_order = order_violations(lines)
    if result.out_of_order:
        result.violations.append(
            f"{len(result.out_of_order)} out of order, first: {result.out_of_order[:5]}"
        )
    if any(n != 0 for n in lags.values()):
        result.violations.append(f"lag not 0 at the end: {lags}")
    if result.exited:
        result.violations.append(
            f"{len(result.exited)} workers exited on their own; first:\n{result.exited[0]}"
        )
    result.took = time.monotonic() - began
    return result


# -- the command ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_log(transport: str, folder: Path) -> AsyncIterator[str]:
    """Start the transport's servers (none for SQLite); yield the URL; stop them."""
    if transport == "sqlite":
        yield f"sqlite:///{folder / 'events.db'}?lease={LEASE:g}&partitions={PARTITIONS}"
    elif transport == "nats":
        from devservers.nats import NatsCluster, nats_server_binary

        cluster = NatsCluster(nats_server_binary())
        try:
            for i in range(3):
                cluster.start(i)
            url = f"nats://{cluster.addresses}?replicas=3&partitions={PARTITIONS}&lease={LEASE:g}s"
            await wait_for_jetstream(url)
            yield url
        finally:
            cluster.stop()
    elif transport == "kafka":
        from devservers.tansu import run_tansu, tansu_binary
        from tests.conftest import KAFKA_TEST_OPTIONS, ONE_RECORD_BATCHES

        # One record per produce batch: Tansu's end offsets (so lag) are right only so.
        with run_tansu(tansu_binary()) as address:
            yield (
                f"kafka://{address}?{KAFKA_TEST_OPTIONS}&{ONE_RECORD_BATCHES}"
                f"&partitions={PARTITIONS}"
            )
    else:
        raise ValueError(f"unknown transport {transport!r}")


@contextlib.asynccontextmanager
async def soak_on(url: str, folder: Path) -> AsyncIterator[Soak]:
    """A :class:`Soak` on ``url`` with TOPIC created; its workers stopped at the end."""
    soak = Soak(folder, url)
    await soak.app.start()
    try:
        await soak.app.transport.create_topic(TOPIC, PARTITIONS)
        yield soak
    finally:
        soak.shutdown()
        await soak.app.close()


async def main_async(plan: Plan, keep: bool) -> int:
    folder = Path(tempfile.mkdtemp(prefix=f"tidings-soak-{plan.transport}-"))
    print(f"soak on {plan.transport}: records and worker logs in {folder}", flush=True)
    async with open_log(plan.transport, folder) as url, soak_on(url, folder) as soak:
        print(f"url {url}", flush=True)
        result = await run(soak, plan)
        print(result.summary(), flush=True)
        if result.violations:
            print("VIOLATIONS:", *result.violations, sep="\n- ")
            print("worker logs, tail:\n" + soak.logs_tail())
            return 1
    if not keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.transports.soak", description=__doc__)
    parser.add_argument("--transport", choices=sorted(KILL_EVERY), default="sqlite")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the kills go on")
    parser.add_argument("--kill-every", type=float, help="seconds between SIGKILLs")
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--reset",
        choices=["live", "stopped"],
        default="live",
        help="the forced reset with the group's workers running (the issue's), or with "
        "them stopped first and started again after it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the records of a clean run")
    args = parser.parse_args(argv)
    plan = Plan(
        args.transport,
        args.seconds,
        args.kill_every or KILL_EVERY[args.transport],
        events=args.events,
        seed=args.seed,
        reset=args.reset,
        stop_to_reset=args.transport == "kafka",
    )
    try:
        return asyncio.run(main_async(plan, args.keep))
    except Exception as exc:
        print(f"the soak could not run: {exc!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.pop("TIDINGS_URL", None)
    sys.exit(main())
