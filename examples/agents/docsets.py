"""The local document sets the researcher reads: ``docsets/<name>/*.txt``, one passage
per paragraph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOME = Path(__file__).resolve().parent / "docsets"


@dataclass(frozen=True)
class Document:
    name: str
    passages: tuple[str, ...]


def names() -> list[str]:
    return sorted(p.name for p in HOME.iterdir() if p.is_dir())


def load(docset: str) -> list[Document]:
    """The documents of ``docset``, by file name; KeyError if there is no such set."""
    if docset not in names():
        raise KeyError(docset)
    documents = []
    for path in sorted((HOME / docset).glob("*.txt")):
        paragraphs = (" ".join(p.split()) for p in path.read_text().split("\n\n"))
        documents.append(Document(path.stem, tuple(p for p in paragraphs if p)))
    return documents
