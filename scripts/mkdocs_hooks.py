"""The documentation site's build plumbing (mkdocs.yml names this file twice).

- As MkDocs hooks: the nav's "Decisions" section is every ``docs/decisions/*.md`` in
  number order, so a new decision needs no nav entry; the Task API's event catalog
  (:func:`taskapi.catalog.write_catalog`) is generated into ``taskapi-catalog/``, where
  docs/taskapi.md links it.
- As a griffe extension (mkdocstrings' ``extensions:``): the docstrings are written
  with Sphinx's roles and literal blocks (``:class:`~tidings.Retry```, ``text::``),
  which Markdown would print as they are; each role becomes its name as code, linked
  where the site documents that object, and ``::`` a colon.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe

README_SNIPPET = '--8<-- "README.md"'  # docs/index.md, all of it

# :class:`Name`, :meth:`~a.b.C.m` (shows "m"), :meth:`C.settled <a.b.C.settled>`.
ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]+?)\s*(?:<([^>]+)>)?`")


def on_config(config: Any) -> Any:
    decisions = sorted(Path(config["docs_dir"], "decisions").glob("*.md"))
    config["nav"].append({"Decisions": [f"decisions/{page.name}" for page in decisions]})
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    from taskapi.catalog import write_catalog

    with tempfile.TemporaryDirectory() as tmp:
        for path in asyncio.run(write_catalog(tmp)):
            uri = f"taskapi-catalog/{path.relative_to(tmp).as_posix()}"
            files.append(File.generated(config, uri, content=path.read_bytes()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """The Home page: README.md, included here (not by pymdownx.snippets, which runs
    after this hook), with ``](docs/img/x.png)`` as ``](img/x.png)``."""
    if page.file.src_uri == "index.md" and markdown.strip() == README_SNIPPET:
        readme = Path(config["docs_dir"]).parent / "README.md"
        return re.sub(r"\]\(docs/", "](", readme.read_text(encoding="utf-8"))
    return markdown


def markdown_of(docstring: str, scope: griffe.Object) -> str:
    """``docstring`` with its Sphinx roles and ``::`` literal-block markers as Markdown;
    a role's name is resolved from ``scope``, where the docstring is."""
    text = ROLE.sub(lambda role: _reference(role, scope), docstring)
    text = re.sub(r"^[ \t]*::\n", "", text, flags=re.MULTILINE)  # "::" alone on its line
    return re.sub(r"::$", ":", text, flags=re.MULTILINE)


def _reference(role: re.Match[str], scope: griffe.Object) -> str:
    """A link to the role's object where the site has a page for it, else its name as
    code (an optional cross-reference: autorefs leaves it unlinked, without a warning)."""
    short, name, target = role[1] == "~", role[2], role[3] or role[2]
    title = name.rsplit(".", 1)[-1] if short else name
    head, dot, rest = target.partition(".")
    if head == scope.package.name:  # a full path
        path = target
    else:  # a name where the docstring is (``Outbox.add``: Outbox's path, then .add)
        try:
            path = scope.resolve(head) + dot + rest
        except griffe.NameResolutionError:
            return f"`{title}`"
    return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'


def _defined(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and everything defined in it (not what it imports)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _defined(member)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _defined(pkg):
            if obj.docstring is not None:
                obj.docstring.value = markdown_of(obj.docstring.value, obj)
