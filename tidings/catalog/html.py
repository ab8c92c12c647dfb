"""The catalog as a static site (``tidings catalog --html DIR``): plain HTML files with
their CSS inline, no script, nothing fetched, readable from the folder itself.

``index.html`` (every type, the producer -> topic -> consumer graph, the causation
flows, the services, the deprecated versions), ``events/<type>.html`` (versions with
their schemas and the changes between them, producers, consumers and their SLAs,
topics, partition key, examples) and ``services/<service>.html``. Every text is
escaped; every link is relative and points at a file written here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

from tidings.catalog.model import Catalog, EventInfo, VersionInfo
from tidings.catalog.svg import Node, columns_svg, levels
from tidings.catalog.text import provenance, reads_text, sla_text, span, utc, utc_ms
from tidings.schema.compat import Change
from tidings.schema.services import ServiceRecord

__all__ = ["event_file", "service_file", "write_html"]

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
h1,h2,h3{line-height:1.2}table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.7em;overflow:auto;font-size:13px}
.deprecated{color:#a30}.past{color:#fff;background:#a30;padding:0 .3em}
.graph{max-width:100%;height:auto;font:12px system-ui,sans-serif}
.graph rect{fill:#eef4fb;stroke:#4a78a8}.graph rect.topic{fill:#fdf5e3;stroke:#b08020}
.graph rect.group{fill:#edf8ee;stroke:#3b8a4a}.graph rect.here{stroke-width:3}
.graph .edge{fill:none;stroke:#777}.graph marker path{fill:#777}.graph .count{fill:#555}
nav{margin-bottom:1em}
"""


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def event_file(type: str) -> str:
    """The page of ``type``, relative to the site's root."""
    return f"events/{type}.html"  # event types are [a-z0-9_.]: safe as they are


def service_file(service: str) -> str:
    """The page of ``service``, relative to the site's root: its name where it is made
    of letters, digits, ``_``, ``-`` and inner dots, else those characters with a hash
    of the name (a service may be a URI, ``/services/task-api``)."""
    safe = _UNSAFE.sub("_", service).strip(".")
    if safe != service:
        safe = f"{safe}-{hashlib.sha256(service.encode()).hexdigest()[:10]}"
    return f"services/{safe}.html"


def write_html(catalog: Catalog, folder: Path | str) -> list[Path]:
    """Write the site into ``folder`` (created if missing); the files written."""
    root = Path(folder)
    (root / "events").mkdir(parents=True, exist_ok=True)
    (root / "services").mkdir(parents=True, exist_ok=True)
    pages = {"index.html": _index(catalog)}
    for event in catalog.events:
        pages[event_file(event.type)] = _event_page(catalog, event)
    for record in catalog.services:
        pages[service_file(record.service)] = _service_page(catalog, record)
    written = []
    for name, text in pages.items():
        path = root / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _page(title: str, body: Sequence[str], *, up: str) -> str:
    """A whole page; ``up`` is the way to the root ("" or "../")."""
    nav = f'<nav><a href="{up}index.html">Event catalog</a></nav>'
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        nav, *body, "</body>", "</html>", "",
    ])  # fmt: skip


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table; the cells are HTML already (escape text before)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def _pre(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _sunset(v: VersionInfo, today: date) -> str:
    if not v.deprecated:
        return ""
    if v.sunset is None:
        return '<span class="deprecated">deprecated, no sunset date</span>'
    if today > v.sunset:
        return f'<span class="past">deprecated; PAST ITS SUNSET {v.sunset.isoformat()}</span>'
    return f'<span class="deprecated">deprecated, sunset {v.sunset.isoformat()}</span>'


# -- the index -----------------------------------------------------------------------


def _index(catalog: Catalog) -> str:
    today = catalog.generated_at.date()
    rows = [
        (
            _link(event_file(e.type), e.type), escape(e.kind), escape(e.owner or "-"),
            escape(span(v.version for v in e.versions))
            + "".join(f" {_sunset(v, today)}" for v in e.versions if v.deprecated),
            escape(", ".join(sorted({p.service for p in e.producers})) or "-"),
            escape(", ".join(sorted({f"{c.service}/{c.group}" for c in e.consumers})) or "-"),
            escape(", ".join(e.topics) or "-"),
        )
        for e in catalog.events
    ]  # fmt: skip
    body = [
        "<h1>Event catalog</h1>",
        f"<p>Of <code>{escape(catalog.url)}</code>, made {escape(utc(catalog.generated_at) or '')}"
        f": {len(catalog.events)} event type(s), {len(catalog.services)} service(s).</p>",
        "<h2>Event types</h2>",
        _table(("Type", "Kind", "Owner", "Versions", "Producers", "Consumers", "Topics"), rows),
        "<h2>Who sends what where</h2>",
        "<p>Producer services, the topics they publish on, the groups that read them.</p>",
        _system_graph(catalog, "system", up=""),
        "<h2>Flows</h2>",
        _flows(catalog, catalog.flows, "flows", up=""),
        "<h2>Services</h2>",
        "<ul>"
        + "".join(f"<li>{_link(service_file(r.service), r.service)}</li>" for r in catalog.services)
        + "</ul>"
        if catalog.services
        else "<p>No service has recorded itself in the schema registry.</p>",
        *_deprecations(catalog, today),
        "<h2>Events scanned</h2>",
        _table(
            ("Topic", "Events read"),
            [(escape(t), str(n)) for t, n in sorted(catalog.scanned.items())],
        ),
    ]
    return _page("Event catalog", body, up="")


def _deprecations(catalog: Catalog, today: date) -> list[str]:
    found = catalog.deprecations()
    if not found:
        return []
    items = []
    for d in found:
        lines = d.lines(today)
        head = escape(lines[0])
        if d.overdue(today):
            head = f'<span class="past">{head}</span>'
        rest = "".join(f"<li>{escape(line.strip())}</li>" for line in lines[1:])
        items.append(f"<li>{_link(event_file(d.type), d.type)}: {head}<ul>{rest}</ul></li>")
    return ["<h2>Deprecated versions still in use</h2>", "<ul>", *items, "</ul>"]


def _system_graph(catalog: Catalog, name: str, *, up: str, only: EventInfo | None = None) -> str:
    """Producer services -> topics -> consuming groups, for every type or ``only``."""
    events = [only] if only is not None else list(catalog.events)
    producers: dict[str, Node] = {}
    topics: dict[str, Node] = {}
    groups: dict[str, Node] = {}
    edges: dict[tuple[str, str], set[str]] = {}
    for e in events:
        for p in e.producers:
            producers[f"s:{p.service}"] = Node(
                f"s:{p.service}", p.service, up + service_file(p.service)
            )
            topics[f"t:{p.topic}"] = Node(f"t:{p.topic}", p.topic, None, "topic")
            edges.setdefault((f"s:{p.service}", f"t:{p.topic}"), set()).add(e.type)
        for c in e.consumers:
            gid = f"g:{c.service}/{c.group}"
            groups[gid] = Node(gid, f"{c.service}/{c.group}", up + service_file(c.service), "group")
            topics[f"t:{c.topic}"] = Node(f"t:{c.topic}", c.topic, None, "topic")
            edges.setdefault((f"t:{c.topic}", gid), set()).add(e.type)
    if not edges:
        return "<p>Nothing is known to be published or read.</p>"
    columns = [sorted(d.values(), key=lambda n: n.label) for d in (producers, topics, groups)]
    labelled = [(a, b, _types_label(t) if only is None else None) for (a, b), t in edges.items()]
    title = "Producers, topics and consumers" + (f" of {only.type}" if only else "")
    return columns_svg(columns, labelled, name=name, title=title)


def _types_label(types: set[str]) -> str:
    return next(iter(types)) if len(types) == 1 else f"{len(types)} types"


def _flows(catalog: Catalog, flows: Sequence[Any], name: str, *, up: str) -> str:
    if not flows:
        return (
            "<p>No event in the scan names another scanned event as its cause "
            "(<code>causationid</code>).</p>"
        )
    pairs = [(f.cause, f.effect) for f in flows]
    nodes = sorted({t for pair in pairs for t in pair})
    known = {e.type for e in catalog.events}
    columns = [
        [Node(t, t, up + event_file(t) if t in known else None) for t in column]
        for column in levels(nodes, pairs)
    ]
    edges = [(f.cause, f.effect, str(f.count)) for f in flows]
    graph = columns_svg(columns, edges, name=name, title="Which event types cause which")
    rows = [(escape(f.cause), escape(f.effect), str(f.count)) for f in flows]
    return graph + _table(("Cause", "Effect", "Events"), rows)


# -- one event type ------------------------------------------------------------------


def _event_page(catalog: Catalog, e: EventInfo) -> str:
    today = catalog.generated_at.date()
    key = (
        f"the subject, taken from the payload's <code>{escape(e.subject)}</code>"
        if e.subject
        else "the subject given at publish"
    )
    facts = [
        ("Kind", escape(e.kind)),
        ("Owner", _service_cell(catalog, e.owner) if e.owner else "-"),
        ("Compatibility", f"{escape(e.mode)}, policy {escape(e.policy)}"),
        ("Partition key", key),
        ("Topics", escape(", ".join(e.topics) or "-")),
    ]  # fmt: skip
    body = [
        f"<h1>{escape(e.type)}</h1>",
        f"<p>{escape(e.description)}</p>" if e.description else "",
        _table(("About", ""), [(escape(k), v) for k, v in facts]),
        "<h2>Producers and consumers</h2>",
        _system_graph(catalog, "graph", up="../", only=e),
        _producers(catalog, e),
        _consumers(catalog, e),
        "<h2>Flows</h2>",
        _flows(catalog, [*catalog.causes(e.type), *catalog.effects(e.type)], "flows", up="../"),
        "<h2>Versions</h2>",
        *[_version(e, v, today) for v in reversed(e.versions)],
    ]
    return _page(f"{e.type}: event catalog", [b for b in body if b], up="../")


def _has(catalog: Catalog, service: str | None) -> bool:
    return service is not None and any(r.service == service for r in catalog.services)


def _service_cell(catalog: Catalog, service: str) -> str:
    if _has(catalog, service):
        return _link("../" + service_file(service), service)
    return escape(service)


def _producers(catalog: Catalog, e: EventInfo) -> str:
    rows = [
        (
            _service_cell(catalog, p.service), escape(p.topic), escape(span(p.versions)),
            "yes" if p.declared else "no", str(p.seen), escape(utc(p.last_seen) or "-"),
        )
        for p in e.producers
    ]  # fmt: skip
    if not rows:
        return "<p>No producer is known: none declares it, and the scan saw none.</p>"
    return _table(("Producer", "Topic", "Versions", "Declared", "Seen", "Last seen"), rows)


def _consumers(catalog: Catalog, e: EventInfo) -> str:
    rows = [
        (
            _service_cell(catalog, c.service), escape(c.group), escape(c.topic),
            escape("; ".join(["every type"] * c.every_type + [reads_text(c.reads)])),
            f'<span class="past">{escape(sla_text(c))}</span>' if c.over_sla
            else escape(sla_text(c)),
        )
        for c in e.consumers
    ]  # fmt: skip
    if not rows:
        return "<p>No group is known to read it.</p>"
    return _table(("Service", "Group", "Topic", "Reads (version -> as)", "SLA (lag)"), rows)


def _breaks(change: Change) -> str:
    return ", ".join(m.value for m in change.breaks) or "-"


def _version(e: EventInfo, v: VersionInfo, today: date) -> str:
    parts = [f'<h3 id="v{v.version}">v{v.version}</h3>']
    about = provenance(v)
    if v.fingerprint:
        about.append(f"fingerprint {v.fingerprint[:16]}")
    parts.append(f"<p>{escape('; '.join(about))} {_sunset(v, today)}</p>")
    if v.previous is not None:
        parts.append(f"<h4>Changes from v{v.previous}</h4>")
        rows = [
            (f"<code>{escape(c.path)}</code>", escape(c.phrase), escape(_breaks(c)))
            for c in v.changes
        ]
        parts.append(
            _table(("Path", "Change", "Breaks"), rows) if rows else "<p>The same schema.</p>"
        )
    if v.personal:
        parts.append("<h4>Personal data</h4>")
        marked = [
            (f'<code class="personal">{escape(f.path)}</code>', f"<code>{escape(f.subject)}</code>")
            for f in v.personal
        ]
        parts.append(_table(("Field", "Subject (whose data it is)"), marked))
    if v.example is not None:
        parts.append(f"<h4>Example (from the {escape(v.example_from or '')})</h4>")
        parts.append(_pre(v.example))
    if v.schema is not None:
        parts.append("<h4>JSON Schema</h4>" + _pre(v.schema))
    return "\n".join(parts)


# -- one service ---------------------------------------------------------------------


def _service_page(catalog: Catalog, r: ServiceRecord) -> str:
    known = {e.type for e in catalog.events}

    def type_cell(t: str) -> str:
        return _link("../" + event_file(t), t) if t in known else escape(t)

    recorded = (
        f"Recorded {escape(utc_ms(r.at) or '')} on {escape(r.host)}."
        if r.host
        else "As the app declares it (not recorded yet)."
    )
    subs = [
        (
            escape(s.group), escape(s.topic),
            "every type" if s.types is None else ", ".join(type_cell(t) for t in s.types),
            "<br>".join(
                f"{type_cell(t)}: {escape(reads_text(dict(v)))}" for t, v in sorted(s.reads.items())
            ),
            escape(f"{r.slas[s.group]:g} s" if s.group in r.slas else "-"),
            escape(", ".join(s.handlers)),
        )
        for s in r.subscriptions
    ]  # fmt: skip
    pubs = [(type_cell(p.type), escape(p.topic), escape(span(p.versions))) for p in r.publishes]
    held = [
        (type_cell(h.type), f"v{h.version}", escape(h.kind), escape(h.owner or "-"),
         "yes" if h.deprecated else "no", escape(h.sunset.isoformat() if h.sunset else "-"))
        for h in r.contracts
    ]  # fmt: skip
    body = [
        f"<h1>{escape(r.service)}</h1>",
        f"<p>{recorded}</p>",
        "<h2>Subscriptions</h2>",
        _table(("Group", "Topic", "Types", "Reads", "SLA (lag)", "Handlers"), subs),
        "<h2>Publishes</h2>",
        _table(("Type", "Topic", "Versions"), pubs),
        "<h2>Contracts it holds</h2>",
        _table(("Type", "Version", "Kind", "Owner", "Deprecated", "Sunset"), held),
    ]
    return _page(f"{r.service}: event catalog", body, up="../")
