"""The catalog as text (``tidings catalog``) and as JSON (``--json``)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from tidings.catalog.model import Catalog, Consumer, EventInfo, Producer, VersionInfo
from tidings.schema.services import ServiceRecord

__all__ = ["catalog_json", "render_text", "utc"]


def utc(when: datetime | None) -> str | None:
    """ISO-8601 with a ``Z``, to the second."""
    if when is None:
        return None
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def span(versions: Any) -> str:
    return ",".join(f"v{v}" for v in versions) or "-"


def reads_text(reads: dict[int, int]) -> str:
    """``v1->v3,v3``: each version decoded, with the one its handlers get if upcast."""
    return ",".join(f"v{v}" if r == v else f"v{v}->v{r}" for v, r in sorted(reads.items())) or "-"


def producer_text(p: Producer) -> str:
    how = ["declared"] if p.declared else []
    if p.seen:
        how.append(f"{p.seen} seen, last {utc(p.last_seen)}")
    return f"{p.service} -> {p.topic} ({span(p.versions)}; {'; '.join(how)})"


def consumer_text(c: Consumer) -> str:
    reads = "every type" if c.every_type and not c.reads else f"reads {reads_text(c.reads)}"
    if c.every_type and c.reads:
        reads = f"every type; reads {reads_text(c.reads)}"
    sla = f"; {sla_text(c)}" if c.sla is not None else ""
    return f"{c.service}/{c.group} <- {c.topic} ({reads}{sla})"


def sla_text(c: Consumer) -> str:
    """A consumer's SLA and where its lag stands against it: ``SLA 60s, lag 3.2s`` or
    ``SLA 60s, OVER: lag 73s``; the lag left out when unknown."""
    if c.sla is None:
        return "-"
    if c.lag_seconds is None:
        return f"SLA {c.sla:g}s"
    return f"SLA {c.sla:g}s, {'OVER: ' if c.over_sla else ''}lag {c.lag_seconds:.3g}s"


def provenance(v: VersionInfo) -> list[str]:
    """Who registered ``v`` and when (or that the registry does not hold it), and
    whether it is a breaking new major version: for the text and the HTML pages."""
    facts = []
    if v.registered_by:
        facts.append(f"registered by {v.registered_by} at {utc(v.registered_at)}")
    elif v.schema is None:
        facts.append("not in the schema registry")
    if v.breaking:
        facts.append("breaking: a new major version")
    return facts


def version_text(v: VersionInfo, today: date) -> str:
    parts = [f"v{v.version}", *provenance(v)]
    if v.deprecated:
        sunset = v.sunset.isoformat() if v.sunset else "no sunset date"
        past = " PAST" if v.sunset is not None and today > v.sunset else ""
        parts.append(f"DEPRECATED (sunset {sunset}{past})")
    if v.previous is not None:
        parts.append(f"{len(v.changes)} change(s) from v{v.previous}")
    if v.personal:
        parts.append("personal: " + ", ".join(map(str, v.personal)))
    return "; ".join(parts)


def _event_lines(catalog: Catalog, e: EventInfo, today: date) -> list[str]:
    owner = f", owner {e.owner}" if e.owner else ""
    lines = [f"{e.type} ({e.kind}{owner}; mode {e.mode}, policy {e.policy})"]
    if e.description:
        lines.append("  " + e.description.split("\n\n", 1)[0].replace("\n", " "))
    lines.append(f"  topics: {', '.join(e.topics) or '-'}")
    key = f"the subject, from the payload's {e.subject!r}" if e.subject else "the subject"
    lines.append(f"  partition key: {key}")
    lines += ["  versions:"] + [f"    {version_text(v, today)}" for v in e.versions]
    lines += ["  producers:"] + [f"    {producer_text(p)}" for p in e.producers or ()]
    if not e.producers:
        lines[-1] += " -"
    lines += ["  consumers:"] + [f"    {consumer_text(c)}" for c in e.consumers]
    if not e.consumers:
        lines[-1] += " -"
    for label, flows in (
        ("caused by", [(f.cause, f.count) for f in catalog.causes(e.type)]),
        ("causes", [(f.effect, f.count) for f in catalog.effects(e.type)]),
    ):
        if flows:
            lines.append(f"  {label}: " + ", ".join(f"{t} ({n})" for t, n in flows))
    return lines


def render_text(catalog: Catalog, today: date | None = None) -> str:
    """The catalog as ``tidings catalog`` prints it: each type, then the flows, the
    services, and the deprecated versions still in use."""
    today = today or catalog.generated_at.date()
    lines = [f"event catalog of {catalog.url} ({len(catalog.events)} type(s))", ""]
    for e in catalog.events:
        lines += [*_event_lines(catalog, e, today), ""]
    lines.append("flows (from the causation of the events scanned):")
    lines += [f"  {f.cause} -> {f.effect} ({f.count})" for f in catalog.flows] or ["  -"]
    lines += ["", "services:"]
    for r in catalog.services:
        slas = ", ".join(f"{g} {s:g}s" for g, s in sorted(r.slas.items()))
        recorded = f"recorded {utc_ms(r.at)} on {r.host}" if r.host else "declared by the app"
        lines.append(f"  {r.service}: groups {', '.join(r.groups()) or '-'}; {recorded}")
        if slas:
            lines.append(f"    SLA: {slas}")
    if not catalog.services:
        lines.append("  -")
    found = catalog.deprecations()
    if found:
        lines += ["", "deprecated versions:"]
        lines += [f"  {line}" for d in found for line in d.lines(today)]
    scanned = ", ".join(f"{t} {n}" for t, n in sorted(catalog.scanned.items())) or "nothing"
    lines += ["", f"events scanned per topic: {scanned}"]
    return "\n".join(lines)


def utc_ms(ms: int) -> str | None:
    return utc(datetime.fromtimestamp(ms / 1000, UTC))


def _version_json(v: VersionInfo) -> dict[str, Any]:
    return {
        "version": v.version,
        "schema": v.schema,
        "fingerprint": v.fingerprint,
        "registered_by": v.registered_by,
        "registered_at": utc(v.registered_at),
        "breaking": v.breaking,
        "deprecated": v.deprecated,
        "sunset": v.sunset.isoformat() if v.sunset else None,
        "changes_from": v.previous,
        "changes": [
            {
                "path": c.path,
                "rule": c.rule.value,
                "phrase": c.phrase,
                "breaks": [m.value for m in c.breaks],
            }
            for c in v.changes
        ],
        "example": v.example,
        "example_from": v.example_from,
        "personal": [{"path": f.path, "subject": f.subject} for f in v.personal],
    }


def _service_json(r: ServiceRecord) -> dict[str, Any]:
    return {**r.body(), "host": r.host, "recorded_at": utc_ms(r.at) if r.host else None}


def catalog_json(catalog: Catalog) -> dict[str, Any]:
    """The catalog as one JSON document (``tidings catalog --json``)."""
    today = catalog.generated_at.date()
    return {
        "url": catalog.url,
        "generated_at": utc(catalog.generated_at),
        "events": [
            {
                "type": e.type,
                "kind": e.kind,
                "owner": e.owner,
                "description": e.description,
                "subject": e.subject,
                "mode": e.mode,
                "policy": e.policy,
                "topics": list(e.topics),
                "versions": [_version_json(v) for v in e.versions],
                "producers": [
                    {
                        "service": p.service,
                        "topic": p.topic,
                        "versions": list(p.versions),
                        "declared": p.declared,
                        "seen": p.seen,
                        "last_seen": utc(p.last_seen),
                    }
                    for p in e.producers
                ],
                "consumers": [
                    {
                        "service": c.service,
                        "group": c.group,
                        "topic": c.topic,
                        "reads": {str(v): r for v, r in sorted(c.reads.items())},
                        "every_type": c.every_type,
                        "sla": c.sla,
                        "lag_seconds": c.lag_seconds,
                        "over_sla": c.over_sla,
                    }
                    for c in e.consumers
                ],
            }
            for e in catalog.events
        ],
        "flows": [{"cause": f.cause, "effect": f.effect, "count": f.count} for f in catalog.flows],
        "services": [_service_json(r) for r in catalog.services],
        "deprecations": [d.json(today) for d in catalog.deprecations()],
        "scanned": dict(sorted(catalog.scanned.items())),
    }
