"""The shape of the package, as docs/architecture.md draws it: layers that only point
down, no import cycles (type-only and function-local imports count), small modules and
functions."""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tidings"

# Bottom first. A module may import its own layer and the ones below it, never above.
# (docs/architecture.md, "Layers", draws the same list.)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("tidings.errors",)),
    ("envelope and codec", ("tidings.envelope", "tidings.codec", "tidings.partitioning")),
    ("transport protocol", ("tidings.transport",)),
    (
        "transports and SQL helpers",
        ("tidings.transports", "tidings._sqlite", "tidings._sql", "tidings.sqltypes"),
    ),
    (
        "contracts and declarations",
        (
            "tidings.contracts",
            "tidings.naming",
            "tidings.schema",
            "tidings.personal",
            "tidings.shredding",
            "tidings.subscriber",
            "tidings.stats",
            "tidings.context",
            "tidings.logs",
            "tidings.lag_health",
            "tidings.progress",
        ),
    ),
    ("dead letters", ("tidings.dead_letters",)),
    (
        "outbox, inbox, scheduler, workflows",
        (
            "tidings.outbox",
            "tidings.inbox",
            "tidings.scheduler",
            "tidings.aggregates",
            "tidings.projections",
            "tidings.sagas",
        ),
    ),
    ("middleware", ("tidings.middleware", "tidings.otel")),
    ("app", ("tidings.app", "tidings.declarations", "tidings.publish_options")),
    ("worker", ("tidings.worker",)),
    (
        "operating and edges",
        (
            "tidings.admin",
            "tidings.tail",
            "tidings.trace",
            "tidings.asgi",
            "tidings.testing",
            "tidings.asyncapi",
            "tidings.catalog",
            "tidings.metrics",
            "tidings.cli",
            "tidings.dashboard",
        ),
    ),
    ("the package", ("tidings", "tidings.__main__")),
]

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# Where a limit is exceeded on purpose: path (from the package root) or
# "path:function" -> why.
EXCEPTIONS: dict[str, str] = {
    "tidings/codec/structured.py:to_dict": (
        "runs for every event published: each attribute is spelled out rather than looped "
        "over getattr (measured in bench/fig_codec.py)"
    ),
}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports() -> dict[str, set[str]]:
    """module -> the tidings modules it imports, anywhere in its source."""
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                if not targets and base in modules:
                    targets = [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in modules]
            else:
                continue
            edges[name].update(t for t in targets if t != name)
    return edges


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "tidings" and module.startswith(prefix + "."))
            if inside and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return rank


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(set(edges).union(*edges.values())):
        if module not in index:
            visit(module)
    return found


def test_there_is_no_import_cycle_counting_type_only_and_local_imports() -> None:
    assert _cycles(_imports()) == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(_imports().items())
        for target in sorted(targets)
        if _layer(target) > _layer(module) and not target.startswith(module + ".")
    ]
    assert upward == []


def test_the_graph_sees_type_only_and_function_local_imports() -> None:
    edges = _imports()
    # worker.worker imports the app under TYPE_CHECKING only; the CLI imports lazily.
    assert "tidings.app" in edges["tidings.worker.worker"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_is_in_a_layer() -> None:
    for module in _modules():
        _layer(module)


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.name))
def test_modules_and_functions_are_small(path: pathlib.Path) -> None:
    where = str(path.relative_to(PACKAGE.parent))
    source = path.read_text()
    lines = source.count("\n")
    if where not in EXCEPTIONS:
        assert lines <= MAX_MODULE_LINES, f"{where} has {lines} lines: split it along a concept"
    for function in _functions(ast.parse(source)):
        length = (function.end_lineno or function.lineno) - function.lineno + 1
        name = f"{where}:{function.name}"
        if name not in EXCEPTIONS:
            assert length <= MAX_FUNCTION_LINES, f"{name} has {length} lines"


def test_each_exception_to_the_limits_names_something_that_exists_and_why() -> None:
    for name, why in EXCEPTIONS.items():
        path, _, function = name.partition(":")
        assert (PACKAGE.parent / path).exists(), name
        assert len(why) > 20, f"{name}: say why"
        if function:
            tree = ast.parse((PACKAGE.parent / path).read_text())
            assert function in {f.name for f in _functions(tree)}, name
