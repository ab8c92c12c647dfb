"""The graphs' layout (tidings.catalog.svg): columns by causation, cycles cut, ids
kept apart between two graphs of a page, text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tidings.catalog.svg import Node, columns_svg, levels


def test_each_type_stands_right_of_the_furthest_type_that_causes_it() -> None:
    edges = [("a", "b"), ("b", "d"), ("a", "c"), ("c", "d"), ("d", "e"), ("a", "e")]
    assert levels(["e", "d", "c", "b", "a"], edges) == [["a"], ["b", "c"], ["d"], ["e"]]


def test_a_cycle_is_cut_where_it_closes_and_leaves_no_empty_column() -> None:
    assert levels(["a", "b"], [("a", "b"), ("b", "a")]) == [["b"], ["a"]]
    assert levels(["a"], [("a", "a")]) == [["a"]]
    assert levels([], []) == []


def test_the_svg_is_well_formed_with_its_own_ids_and_escaped_labels() -> None:
    svg = columns_svg(
        [[Node("x", "<x> & y", "a.html")], [Node("z", "z" * 40)]],
        [("x", "z", "1 & 2"), ("x", "missing", None)],
        name="one",
        title='a "graph"',
    )
    root = ET.fromstring(svg)  # well-formed XML: everything escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert {e.get("id") for e in root.iter() if e.get("id")} == {"one-title", "one-arrow"}
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "1 & 2" in texts
    assert "<x> & y" in texts
    assert "z" * 23 + "\u2026" in texts  # cut, with the whole name as its title
    assert len(list(root.iter(f"{ns}path"))) == 2  # the arrow head and one edge
