"""Exported schemas: a folder of one JSON file per type and version, to commit to a
repository and check an app against in CI (``tidings schema export`` and
``tidings schema check --against DIR``).

Each file is ``<type>.v<version>.json``: an object with the keys ``type``,
``version``, ``breaking``, ``fingerprint`` and ``schema`` (the model's
``model_json_schema()``), keys sorted, indented by two, ending in a newline, so that
exporting the same contracts again gives the same bytes and a review shows what
changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from tidings.contracts import Contract
from tidings.errors import ConfigError
from tidings.schema.registry import offered
from tidings.schema.state import RegistryState, SchemaVersion

__all__ = ["export", "file_name", "read_folder"]

_FILE_RE = re.compile(r"(?P<type>.+)\.v(?P<version>[1-9][0-9]*)\.json")


def file_name(entry: SchemaVersion) -> str:
    """``order.placed.v2.json``."""
    return f"{entry.type}.v{entry.version}.json"


def _text(entry: SchemaVersion) -> str:
    doc = {
        "type": entry.type,
        "version": entry.version,
        "breaking": entry.breaking,
        "fingerprint": entry.fingerprint,
        "schema": entry.schema,
    }
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(contracts: Iterable[Contract], folder: Path) -> list[Path]:
    """Write one file per contract into ``folder`` (created if missing); return the
    files written or rewritten (a file that already holds the same text is left)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for contract in sorted(contracts, key=lambda c: (c.type, c.version)):
        entry = offered(contract)
        path = folder / file_name(entry)
        text = _text(entry)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def read_folder(folder: Path) -> RegistryState:
    """The registry an exported folder describes (each type in mode ``BACKWARD``, its
    versions as the files hold them); ConfigError if the folder or a file is not one
    :func:`export` writes."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder of exported schemas (tidings schema export)")
    state = RegistryState()
    for path in sorted(folder.glob("*.json")):
        match = _FILE_RE.fullmatch(path.name)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            entry = SchemaVersion.from_entry(doc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not an exported schema: {exc!r}") from None
        if match is None or (match["type"], int(match["version"])) != (entry.type, entry.version):
            raise ConfigError(f"{path} holds {file_name(entry)}: rename it, or export again")
        state.add(entry)
    return state
