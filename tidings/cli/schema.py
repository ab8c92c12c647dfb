"""``tidings schema list|show|diff|set-mode|check|export|forget-service``: the log's
schema registry.

Argument parsing and printing only; the registry is
:class:`tidings.schema.registry.SchemaRegistry`, the exported folder
:mod:`tidings.schema.files`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tidings import admin
from tidings.app import Tidings
from tidings.cli.common import UsageError, add_common, load_app, opened, positive_int
from tidings.cli.output import print_json, table, utc_text
from tidings.personal import personal_fields
from tidings.schema import Mode, diff
from tidings.schema.files import export, read_folder
from tidings.schema.registry import SchemaRegistry, offers, report
from tidings.schema.services import Deprecation, deprecations, describe
from tidings.schema.state import RegistryState, SchemaVersion, parse_mode, parse_policy

__all__ = ["add_commands"]

_HELP = """\
The schema registry lives with the log, in its topic _tidings.schemas: per event
type, each version's JSON Schema (from its pydantic model), its fingerprint, who
registered it and when, and the type's compatibility mode (default BACKWARD). An app
registers its contracts when it starts, and refuses to start if one breaks the
registry.

  list      the registered types: versions, mode, latest fingerprint
  show      one version's schema (default: the latest)
  diff      every change between two versions of a type
  set-mode  a type's compatibility mode: NONE, BACKWARD, FORWARD, FULL, or one of
            the last three with _TRANSITIVE (against every earlier version)
  check     whether an app's contracts may be registered (exit 1 on a break): for CI;
            lists the deprecated versions and who still produces or consumes them
  export    write an app's contracts to a folder, one JSON file per type and version
  forget-service
            forget what a service that no longer runs recorded of itself (e.g. the
            group that owned a command); its next start records it again
"""


def add_commands(sub: Any) -> None:
    """Register ``schema list|show|diff|set-mode|check|export|forget-service``."""
    schema = sub.add_parser(
        "schema",
        help="list, show, diff and check event schemas (the schema registry)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = schema.add_subparsers(dest="action", metavar="ACTION", parser_class=type(schema))
    actions.required = True
    _action(actions, "list", cmd_list, "list the registered types, versions and modes")
    p = _action(
        actions, "show", cmd_show, "show a version's schema",
        "show version N of TYPE (default: the latest): who registered it, when, its JSON Schema",
    )  # fmt: skip
    p.add_argument("type", metavar="TYPE", help=_TYPE)
    p.add_argument("--version", type=positive_int, metavar="N", help="default: the latest")
    p = _action(
        actions, "diff", cmd_diff, "the changes between two versions",
        "every change from version A to version B of TYPE, compatible or not, and the "
        "directions each breaks",
    )  # fmt: skip
    p.add_argument("type", metavar="TYPE", help=_TYPE)
    p.add_argument("a", type=positive_int, metavar="A", help="the older version")
    p.add_argument("b", type=positive_int, metavar="B", help="the newer version")
    p = _action(
        actions, "set-mode", cmd_set_mode, "set a type's compatibility mode",
        "set TYPE's compatibility mode; it judges the versions registered from now",
    )  # fmt: skip
    p.add_argument("type", metavar="TYPE", help=_TYPE)
    p.add_argument("mode", metavar="MODE", help=", ".join(m.value for m in Mode))
    p.add_argument("--policy", help="LENIENT (the default) or STRICT, as Confluent names them")
    p = _action(
        actions, "check", cmd_check, "check an app's contracts (exit 1 on a break)",
        "check APP's contracts against the registry (or the folder --against DIR): print "
        "every break and exit 1, or exit 0 if all of them may be registered",
    )  # fmt: skip
    p.add_argument("app", help=_APP)
    p.add_argument("--against", type=Path, metavar="DIR", help="a folder from 'schema export'")
    p.add_argument("--mode", help="with --against: the mode of every type (default BACKWARD)")
    p = _action(
        actions, "export", cmd_export, "write an app's schemas to a folder",
        "write one JSON file per type and version of APP's contracts into DIR "
        "(<type>.v<version>.json, stable formatting), to commit and check against",
    )  # fmt: skip
    p.add_argument("app", help=_APP)
    p.add_argument("dir", type=Path, metavar="DIR", help="the folder, created if missing")
    p = _action(
        actions, "forget-service", cmd_forget_service, "forget a service's record",
        "forget what SERVICE recorded of itself at its last start (its subscriptions, "
        "what it publishes): for a service that no longer runs, whose record still owns "
        "a command or lists it as a consumer; it records itself again when it starts",
    )  # fmt: skip
    p.add_argument("service", metavar="SERVICE", help="the service's name (Tidings(service=))")


_TYPE = "the event type, e.g. order.placed"
_APP = "module:attribute of a tidings.Tidings app"


def _action(
    actions: Any, name: str, func: Any, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """One ``schema`` action: its parser, with ``--url`` and ``--json``, running ``func``."""
    text = description or help
    p: argparse.ArgumentParser = actions.add_parser(
        name, help=help, description=text[0].upper() + text[1:] + "."
    )
    add_common(p)
    p.set_defaults(func=func)
    return p


def _version_json(v: SchemaVersion, *, schema: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": v.type,
        "version": v.version,
        "fingerprint": v.fingerprint,
        "breaking": v.breaking,
        **v.about(),  # subject (the subject field), deprecated, sunset
        "registered_by": v.registered_by,
        "registered_at": utc_text(v.registered_at),
        "personal": [{"path": f.path, "subject": f.subject} for f in _personal(v)],
    }
    if schema:
        out["schema"] = v.schema
    return out


def _personal(v: SchemaVersion) -> list[Any]:
    return personal_fields(v.schema) if isinstance(v.schema, dict) else []


async def cmd_list(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        registry = SchemaRegistry(app.transport)
        state = await registry.refresh()
    rows = []
    for type in state.types():
        versions = [state.versions.get(type, {})[v] for v in sorted(state.versions.get(type, {}))]
        rows.append((type, versions, state.mode(type), state.policy(type).value))
    if args.json:
        print_json([
            {"type": t, "mode": m.value, "policy": p, "versions": [_version_json(v) for v in vs]}
            for t, vs, m, p in rows
        ])  # fmt: skip
        return 0
    if not rows:
        print(f"no schemas registered in {args.url}")
        return 0
    print(table(
        ("TYPE", "VERSIONS", "MODE", "POLICY", "FINGERPRINT", "REGISTERED BY", "AT"),
        [
            (t, ",".join(str(v.version) for v in vs), m.value, p,
             vs[-1].fingerprint[:16] if vs else None,
             vs[-1].registered_by if vs else None,
             utc_text(vs[-1].registered_at) if vs else None)
            for t, vs, m, p in rows
        ],
    ))  # fmt: skip
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        registry = SchemaRegistry(app.transport)
        found = await registry.schema(args.type, args.version)
        mode = registry.state.mode(args.type)
        policy = registry.state.policy(args.type)
    if args.json:
        print_json(
            {**_version_json(found, schema=True), "mode": mode.value, "policy": policy.value}
        )
        return 0
    print(f"type:          {found.type}")
    print(f"version:       {found.version}{' (breaking: a new major version)' * found.breaking}")
    print(f"mode:          {mode.value} (policy {policy.value})")
    print(f"fingerprint:   {found.fingerprint}")
    print(f"subject field: {found.subject or '-'}")
    marked = ", ".join(map(str, _personal(found)))
    print(f"personal:      {marked or '-'}")
    if found.deprecated:
        print(f"deprecated:    sunset {found.sunset or '-'}")
    print(f"registered by: {found.registered_by}")
    print(f"registered at: {utc_text(found.registered_at)}")
    print_json(found.schema)
    return 0


async def cmd_diff(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        registry = SchemaRegistry(app.transport)
        old = await registry.schema(args.type, args.a)
        new = await registry.schema(args.type, args.b)
    changes = diff(old.schema, new.schema)
    if args.json:
        print_json([
            {"path": c.path, "rule": c.rule.value, "old": c.old, "new": c.new,
             "phrase": c.phrase, "breaks": [m.value for m in c.breaks]}
            for c in changes
        ])  # fmt: skip
        return 0
    if not changes:
        print(f"{args.type}: v{args.a} and v{args.b} have the same schema")
    for change in changes:
        print(change)
    return 0


async def cmd_set_mode(args: argparse.Namespace) -> int:
    mode = parse_mode(args.mode)  # a bad name is a usage error before the log is opened
    policy = None if args.policy is None else parse_policy(args.policy)
    async with opened(args.url) as app:
        registry = SchemaRegistry(app.transport)
        await registry.set_mode(args.type, mode, service=admin.CLI_SOURCE, policy=policy)
        policy = registry.state.policy(args.type)
    if args.json:
        print_json({"type": args.type, "mode": mode.value, "policy": policy.value})
    else:
        print(f"{args.type}: mode {mode.value}, policy {policy.value}")
    return 0


async def cmd_forget_service(args: argparse.Namespace) -> int:
    async with opened(args.url) as app:
        record = await SchemaRegistry(app.transport).forget_service(args.service)
    groups = record.groups()
    if args.json:
        print_json({"service": record.service, "forgotten": True, "groups": groups})
    else:
        print(f"forgot service {record.service} (groups: {', '.join(groups) or 'none'})")
    return 0


def _load(args: argparse.Namespace) -> Tidings:
    if args.url_given:
        os.environ["TIDINGS_URL"] = args.url  # before the app's module is imported
    return load_app(args.app)


async def cmd_check(args: argparse.Namespace) -> int:
    if args.mode is not None and args.against is None:
        raise UsageError("--mode goes with --against DIR; the registry holds each type's mode")
    mode = parse_mode(args.mode or "BACKWARD")
    target = _load(args)
    contracts = target.registry.contracts()
    if args.against is not None:
        state = read_folder(args.against)
        state.modes = dict.fromkeys(state.types(), mode)
        where = str(args.against)
    else:
        where = args.url if args.url_given else target.url
        async with opened(where) as app:
            state = await SchemaRegistry(app.transport).refresh()
    findings = state.trial(offers(contracts))
    used = _deprecated(state, target)
    today = datetime.now(UTC).date()
    if args.json:
        print_json({
            "ok": not findings,
            "problems": [
                {"type": t, "version": v, "problem": str(p)}
                for t, versions in sorted(findings.items())
                for v, problems in sorted(versions.items())
                for p in problems
            ],
            "deprecated": [d.json(today) for d in used],
        })  # fmt: skip
        return 1 if findings else 0
    if findings:
        print(report(findings, state.modes))
    else:
        print(f"ok: {len(contracts)} contract(s) of {args.app} may be registered in {where}")
    if used:
        print("deprecated versions, and who still produces or consumes them:")
        print("\n".join(f"  {line}" for d in used for line in d.lines(today)))
    return 1 if findings else 0


def _deprecated(state: RegistryState, target: Tidings) -> list[Deprecation]:
    """The deprecated versions and who still uses them: the services recorded in the
    registry, with ``target``'s record as it would be written now."""
    records = dict(state.services)
    records[target.service] = dataclasses.replace(
        describe(target), at=int(datetime.now(UTC).timestamp() * 1000)
    )
    return deprecations(records.values())


async def cmd_export(args: argparse.Namespace) -> int:
    target = _load(args)
    contracts = target.registry.contracts()
    written = export(contracts, args.dir)
    if args.json:
        print_json({"written": [str(p) for p in written], "contracts": len(contracts)})
    else:
        for path in written:
            print(f"wrote {path}")
        print(f"{len(contracts)} contract(s) exported to {args.dir} ({len(written)} changed)")
    return 0
