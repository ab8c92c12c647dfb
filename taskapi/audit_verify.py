"""``taskapi audit verify``: the audit files against their keyed chains and the
checkpoints in the log (decision 0032).

Reported with its file and line: a changed byte in any line (its MAC fails, the newest
line's too), removed, inserted or reordered lines (``n`` and the chain), a file shorter
than a checkpoint of its day (lines cut from the end, a partial last line), a line whose
MAC is not the one a checkpoint recorded, a day with checkpoints and no file. Lines after
their day's last checkpoint are counted as not yet anchored. Files of unkeyed lines
(before decision 0032) are checked by their hash chain, with a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from taskapi.audit_anchor import Checkpoint, read_checkpoints
from taskapi.audit_chain import AuditKey, authentic, genesis, link, load_key, unseal
from taskapi.audit_log import file_name
from taskapi.settings import Settings
from tidings import ConfigError, open_transport

__all__ = ["VerifyReport", "WrongKey", "verify", "verify_log", "verify_main"]

_NAME = re.compile(r"audit-(\d{4}-\d{2}-\d{2})\.jsonl")
_KEYED = ("audited_at", "event", "kid", "n")
_UNKEYED = ("audited_at", "event", "n", "prev")


class WrongKey(ConfigError):
    """The audit files were written with another key than the one given."""


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify`: ``ok``, or the first problem with its file and line
    (the line's position in the file, from 1; None for a problem with the file's name).
    ``files`` and ``lines`` count what was read up to there; ``checkpoints`` the
    checkpoints held against the files, ``unanchored`` the lines after their day's
    last checkpoint (per file), ``unkeyed`` the lines in the format before the key."""

    ok: bool
    files: int
    lines: int
    problem: str | None = None
    file: str | None = None
    line: int | None = None
    checkpoints: int = 0
    unanchored: dict[str, int] = field(default_factory=dict)
    unkeyed: dict[str, int] = field(default_factory=dict)


@dataclass
class _File:
    """What verifying one file found."""

    name: str
    day: str
    checkpoints: list[Checkpoint]
    count: int = 0  # good lines before the problem
    unkeyed: int = 0
    problem: str | None = None
    line: int | None = None
    macs: dict[int, str] = field(default_factory=dict)  # line -> MAC, at checkpoints


def verify(folder: Path, key: AuditKey, checkpoints: Iterable[Checkpoint] = ()) -> VerifyReport:
    """Check every ``audit-*.jsonl`` in ``folder`` with ``key``, in date order, and each
    against the ``checkpoints`` of its day; report the first problem. Raise
    ConfigError if there is neither an audit file nor a checkpoint, :class:`WrongKey`
    if the first keyed line was written with another key."""
    by_day: dict[str, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        by_day.setdefault(checkpoint.day, []).append(checkpoint)
    paths = (
        {p.name: p for p in sorted(Path(folder).glob("audit-*.jsonl"))}
        if Path(folder).is_dir()
        else {}
    )
    names = sorted(paths.keys() | {file_name(day) for day in by_day})
    if not names:
        raise ConfigError(f"no audit files in {folder}")
    lines = files = 0
    unanchored: dict[str, int] = {}
    unkeyed: dict[str, int] = {}
    seen_keyed = [False]
    for name in names:
        day = _day_of(name)
        found = _File(name, day or "", by_day.get(day or "", []))
        if name not in paths:
            newest = max(found.checkpoints, key=lambda c: c.lines)
            found.problem = (
                f"the file is missing: the checkpoint at offset {newest.offset} says it "
                f"has {newest.lines} line(s)"
            )
            found.line = 1
        else:
            files += 1
            _check_file(paths[name], found, key, seen_keyed)
        lines += found.count
        if found.unkeyed:
            unkeyed[name] = found.unkeyed
        total = len(by_day.get(day or "", ()))
        if found.problem is not None:
            return VerifyReport(
                False, files, lines, found.problem, name, found.line, total, unanchored, unkeyed
            )
        newest_lines = max((c.lines for c in found.checkpoints), default=0)
        if found.count > newest_lines:
            unanchored[name] = found.count - newest_lines
    total = sum(len(v) for v in by_day.values())
    return VerifyReport(True, files, lines, None, None, None, total, unanchored, unkeyed)


def _day_of(name: str) -> str | None:
    match = _NAME.fullmatch(name)
    try:
        return date.fromisoformat(match[1]).isoformat() if match else None
    except ValueError:
        return None


def _check_file(path: Path, found: _File, key: AuditKey, seen_keyed: list[bool]) -> None:
    if not found.day:
        found.problem = "the name is not audit-YYYY-MM-DD.jsonl with a real date"
        return
    wanted = {c.lines for c in found.checkpoints}
    head = genesis(found.day)
    read = 0
    size = path.stat().st_size
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            read += len(raw)
            if not raw.endswith(b"\n") and size > read:
                return  # an append in progress, not a cut line
            problem = _check(raw, number, head, found, key, seen_keyed)
            if problem is not None:
                found.problem, found.line = problem, number
                return
            head = link(raw[:-1])
            if number in wanted:
                found.macs[number] = head
            found.count = number
    _against_checkpoints(found)


def _against_checkpoints(found: _File) -> None:
    """The file's lines against its day's checkpoints: none may say more lines, or
    another MAC for a line."""
    for checkpoint in sorted(found.checkpoints, key=lambda c: c.lines):
        if checkpoint.lines > found.count:
            found.problem = (
                f"the file has {found.count} line(s), the checkpoint at offset "
                f"{checkpoint.offset} says {checkpoint.lines}: lines were cut from its end"
            )
            found.line = found.count + 1
            return
        if found.macs.get(checkpoint.lines) != checkpoint.mac:
            found.problem = (
                f"line {checkpoint.lines} is not the line the checkpoint at offset "
                f"{checkpoint.offset} anchored (another MAC): the file was rewritten"
            )
            found.line = checkpoint.lines
            return


def _check(
    raw: bytes, number: int, head: str, found: _File, key: AuditKey, seen_keyed: list[bool]
) -> str | None:
    """The problem with line ``number`` (with its newline), if any."""
    if not raw.endswith(b"\n"):
        return (
            "the last line is cut short (no newline): a write was interrupted, or the "
            "file was truncated; the next append removes it"
        )
    line = raw[:-1]
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return f"line {number} is not valid JSON"
    keyed = unseal(line) is not None
    needs = _KEYED if keyed else _UNKEYED
    if not isinstance(doc, dict) or any(k not in doc for k in needs):
        return f"line {number} is not an audit line (it needs the keys {', '.join(needs)})"
    problem = _numbered(doc["n"], number)
    if problem is not None:
        return problem
    if keyed:
        problem = _keyed(line, doc, number, head, key, seen_keyed)
    elif number - 1 > found.unkeyed:  # a line before it in this file is keyed
        problem = f"line {number} is unkeyed after keyed lines: it was inserted"
    else:
        found.unkeyed += 1
        problem = _unkeyed(doc, number, head, found.day)
    return problem or _on_day(doc, number, found.day)


def _numbered(n: Any, number: int) -> str | None:
    if type(n) is not int:
        return f"line {number}: n is {n!r}, not a line number"
    if n > number:
        gap = str(number) if n == number + 1 else f"{number}-{n - 1}"
        after = f"follows line {number - 1}" if number > 1 else "is the first line"
        return f"missing line(s) {gap}: line {n} {after} (lines were removed or reordered)"
    if n < number:
        return f"line {n} appears again as line {number} (lines were copied or reordered)"
    return None


def _keyed(
    line: bytes, doc: dict[str, Any], number: int, head: str, key: AuditKey, seen: list[bool]
) -> str | None:
    if doc["kid"] != key.id:
        if not seen[0]:
            raise WrongKey(
                f"the audit files were written with key id {doc['kid']}; the key given "
                f"({key.source}) has key id {key.id}: it is not their key"
            )
        return f"line {number} was written with key id {doc['kid']}, the lines before with {key.id}"
    seen[0] = True
    if not authentic(key.secret, head, line):
        if number == 1:
            return (
                "line 1 was changed, or does not start the chain of its day (the file "
                "was renamed): its MAC does not match"
            )
        return f"line {number} was changed: its MAC does not match it and line {number - 1}"
    return None


def _unkeyed(doc: dict[str, Any], number: int, head: str, day: str) -> str | None:
    if doc["prev"] == head:
        return None
    if number == 1:
        return (
            f"line 1 does not start the chain of {day}: the file was renamed, "
            "or its first line changed or replaced"
        )
    return (
        f"line {number} does not match the hash of line {number - 1}: "
        f"line {number - 1} was changed or a line was removed"
    )


def _on_day(doc: dict[str, Any], number: int, day: str) -> str | None:
    when = doc["event"].get("time") if isinstance(doc["event"], dict) else None
    try:
        on = datetime.fromisoformat(str(when)).astimezone(UTC).date().isoformat()
    except ValueError:
        return f"line {number}: its event has no valid time"
    if on != day:
        return f"line {number}: its event's time {when} is not on {day} (it is of {on})"
    return None


async def verify_log(folder: Path, key: AuditKey, url: str) -> VerifyReport:
    """:func:`verify` against the checkpoints in the log at ``url``."""
    transport = open_transport(url, create=False)
    await transport.start()
    try:
        checkpoints = await read_checkpoints(transport)
    finally:
        await transport.close()
    return verify(folder, key, checkpoints)


def verify_main(argv: Sequence[str] | None = None) -> int:
    """``taskapi audit verify``: 0 if every chain is intact and no checkpoint is missed,
    1 at the first problem (which it prints), 2 if there is nothing to check or no key,
    or the key is not the files' key."""
    parser = argparse.ArgumentParser(
        prog="taskapi audit verify",
        description="Check the audit files' keyed chains against the checkpoints in the log.",
    )
    parser.add_argument(
        "dir", nargs="?", type=Path, metavar="DIR", help="the audit folder (default <data>/audit)"
    )
    parser.add_argument(
        "--data", metavar="DIR", help="the data folder ($TASKAPI_DATA, else ./taskapi-data)"
    )
    parser.add_argument(
        "--key-file", type=Path, metavar="FILE",
        help="the audit key's file (default $TASKAPI_AUDIT_KEY, else <data>/audit.key)",
    )  # fmt: skip
    parser.add_argument(
        "--url", help="the log of the checkpoints ($TIDINGS_URL, else <data>/events.db)"
    )
    parser.add_argument(
        "--no-log", action="store_true",
        help="check the chains alone, without the checkpoints (cut ends and missing days "
        "then go unseen)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(args.data)
        if args.key_file is not None:
            settings = _with_key_file(settings, args.key_file)
        folder = args.dir if args.dir is not None else settings.audit_dir
        key = load_key(settings)
        if args.no_log:
            report = verify(folder, key)
        else:
            report = asyncio.run(verify_log(folder, key, args.url or settings.tidings_url))
    except (ConfigError, OSError) as exc:
        print(f"taskapi audit verify: {exc}", file=sys.stderr)
        return 2
    if args.no_log:
        print(
            "warning: checkpoints not read (--no-log): lines cut from the end of a file "
            "and missing days go unseen",
            file=sys.stderr,
        )
    for name, count in sorted(report.unkeyed.items()):
        print(
            f"warning: {name}: {count} line(s) in the unkeyed format (before decision 0032), "
            "checked by their hash chain only: keyed lines appended to the file seal them",
            file=sys.stderr,
        )
    if args.json:
        print(orjson.dumps(asdict(report)).decode())
    elif report.ok:
        print(_ok_text(report))
    else:
        where = f" line {report.line}" if report.line is not None else ""
        print(f"BROKEN: {report.file}{where}: {report.problem}")
    return 0 if report.ok else 1


def _with_key_file(settings: Settings, path: Path) -> Settings:
    return replace(settings, audit_key=None, audit_key_path=path)


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'s' * (count != 1)}"


def _ok_text(report: VerifyReport) -> str:
    text = (
        f"ok: {_plural(report.files, 'file')}, {_plural(report.lines, 'line')}, chain intact; "
        f"{_plural(report.checkpoints, 'checkpoint')} held"
    )
    waiting = sum(report.unanchored.values())
    if waiting:
        files = ", ".join(f"{n} {c}" for n, c in sorted(report.unanchored.items()))
        text += f"; not yet anchored: {_plural(waiting, 'line')} ({files})"
    return text
