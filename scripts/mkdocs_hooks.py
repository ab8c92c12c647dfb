"""The documentation site's build plumbing (mkdocs.yml names this file twice).

- As MkDocs hooks: the nav's "Decisions" section is every ``docs/decisions/*.md`` in
  number order, so a new decision needs no nav entry.
- As a griffe extension (mkdocstrings' ``extensions:``): the docstrings are written
  with Sphinx's roles and literal blocks (``:class:`~tidings.Retry```, ``text::``),
  which Markdown would print as they are; each role becomes a code span of its name,
  as Sphinx shows it, and ``::`` a colon.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

# :class:`Name`, :meth:`~a.b.C.m` (shows "m"), :meth:`C.settled <a.b.C.settled>`.
ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]+?)\s*(?:<[^>]+>)?`")


def on_config(config: Any) -> Any:
    decisions = sorted(Path(config["docs_dir"], "decisions").glob("*.md"))
    config["nav"].append({"Decisions": [f"decisions/{page.name}" for page in decisions]})
    return config


def markdown_of(docstring: str) -> str:
    """``docstring`` with its Sphinx roles and ``::`` literal-block markers as Markdown."""
    text = ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", docstring)
    text = re.sub(r"^\s*::\n", "", text, flags=re.MULTILINE)  # "::" alone on its line
    return re.sub(r"::$", ":", text, flags=re.MULTILINE)


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
