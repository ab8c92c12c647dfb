"""Graphs drawn as inline SVG, laid out in columns: producer -> topic -> consumer, and
the causation flows between event types. No script, no external file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Node", "columns_svg", "levels"]

COLUMN = 330  # px between the left edges of two columns: room for an edge's label
WIDTH = 170  # a node's width
HEIGHT = 26
GAP = 14
MARGIN = 10
CHARS = 24  # a label longer than this is cut, with its full text as the node's title


@dataclass(frozen=True, slots=True)
class Node:
    """A box: ``id`` (unique in its graph), its label, a link (relative), a CSS class."""

    id: str
    label: str
    href: str | None = None
    kind: str = "node"


def columns_svg(
    columns: Sequence[Sequence[Node]],
    edges: Sequence[tuple[str, str, str | None]],
    *,
    name: str,
    title: str,
) -> str:
    """An ``<svg>`` with ``columns`` of nodes left to right and an arrow per edge
    (from id, to id, optional label). ``name`` prefixes the ids inside it, so that two
    graphs can share a page; ``title`` is its accessible name."""
    place: dict[str, tuple[float, float]] = {}
    tallest = max((len(c) for c in columns), default=0)
    for x, column in enumerate(columns):
        for y, node in enumerate(column):
            place[node.id] = (MARGIN + x * COLUMN, MARGIN + y * (HEIGHT + GAP))
    width = MARGIN * 2 + max(len(columns) - 1, 0) * COLUMN + WIDTH
    height = MARGIN * 2 + max(tallest, 1) * (HEIGHT + GAP) - GAP
    marker = f"{name}-arrow"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{name}-title">',
        f'<title id="{name}-title">{escape(title)}</title>',
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z"/>'
        "</marker></defs>",
    ]
    drawn = [(a, b, label) for a, b, label in edges if a in place and b in place]
    fan_out = Counter(a for a, _, _ in drawn)
    fan_in = Counter(b for _, b, _ in drawn)
    for source, target, label in drawn:
        # A label sits at the end where fewer edges meet, so that a fan's labels part.
        near_target = fan_out[source] > fan_in[target]
        out.append(_edge(place[source], place[target], label, marker, near_target))
    for column in columns:
        for node in column:
            out.append(_node(node, *place[node.id]))
    out.append("</svg>")
    return "\n".join(out)


def _edge(
    a: tuple[float, float],
    b: tuple[float, float],
    label: str | None,
    marker: str,
    near_target: bool,
) -> str:
    (ax, ay), (bx, by) = a, b
    if bx > ax:  # left to right: from the right side to the left side
        x1, y1, x2, y2 = ax + WIDTH, ay + HEIGHT / 2, bx, by + HEIGHT / 2
    else:  # back or within a column: under the boxes
        x1, y1, x2, y2 = ax + WIDTH / 2, ay + HEIGHT, bx + WIDTH / 2, by + HEIGHT
    bend = max(abs(x2 - x1) / 2, 30)
    path = (
        f'<path class="edge" d="M{x1:g},{y1:g} C{x1 + bend:g},{y1:g} {x2 - bend:g},{y2:g} '
        f'{x2:g},{y2:g}" marker-end="url(#{marker})"/>'
    )
    if label:
        if bx <= ax:
            t, anchor, dx = 0.5, "middle", 0.0
        elif near_target:
            t, anchor, dx = 0.9, "end", -12.0
        else:
            t, anchor, dx = 0.1, "start", 6.0
        mx, my = _bezier(t, (x1, y1), (x1 + bend, y1), (x2 - bend, y2), (x2, y2))
        path += (
            f'<text class="count" x="{mx + dx:g}" y="{my - 4:g}" text-anchor="{anchor}">'
            f"{escape(label)}</text>"
        )
    return path


def _bezier(t: float, *points: tuple[float, float]) -> tuple[float, float]:
    """The point at ``t`` of the cubic Bezier curve through four ``points``."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
    u = 1 - t
    a, b, c, d = u**3, 3 * u * u * t, 3 * u * t * t, t**3
    return a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3


def _node(node: Node, x: float, y: float) -> str:
    label = node.label if len(node.label) <= CHARS else node.label[: CHARS - 1] + "\u2026"
    box = (
        f'<rect class="{escape(node.kind)}" x="{x:g}" y="{y:g}" width="{WIDTH}" '
        f'height="{HEIGHT}" rx="4"/><text x="{x + 8:g}" y="{y + HEIGHT / 2 + 4:g}">'
        f"{escape(label)}</text>"
    )
    inner = f"<title>{escape(node.label)}</title>{box}"
    if node.href:
        return f'<a href="{escape(node.href)}">{inner}</a>'
    return f"<g>{inner}</g>"


def levels(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[list[str]]:
    """``nodes`` in columns: each one column right of the furthest node that points
    to it (a cycle is cut where it closes), sorted by name within a column."""
    after: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a in after and b in after and a != b:
            after[a].append(b)
    level = dict.fromkeys(nodes, 0)
    for start in sorted(nodes):
        stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for nxt in after[node]:
                if nxt in path or level[nxt] >= level[node] + 1:
                    continue
                level[nxt] = level[node] + 1
                stack.append((nxt, (*path, nxt)))
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for node in sorted(nodes):
        out[level[node]].append(node)
    return [column for column in out if column]  # a cycle may leave a column empty
