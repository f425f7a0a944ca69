"""Imports only go down: read from the code's own `import` statements (ast; lazy imports inside
functions and TYPE_CHECKING imports count too), no module of chat_api imports one of a layer above
its own, no modules import each other in a circle, and migrations import nothing from the
application (they are frozen snapshots)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "chat_api"

# From the ground up. A module may import modules of its own layer (without a circle) and of the
# layers below it, never above.
LAYERS: list[tuple[str, ...]] = [
    ("chat_api.core",),  # plumbing: config, database, errors, limits, telemetry (and chat_api's __version__)
    ("chat_api.auth",),  # who is calling
    ("chat_api.events",),  # the log and the stream (domains write to it)
    ("chat_api.messages",),
    ("chat_api.rooms",),  # a room shows its last message
    ("chat_api.health", "chat_api.web"),  # probes; the browser client
    ("chat_api.server", "chat_api.app"),  # the HTTP server; the application assembled
    ("chat_api.workers",),  # CHAT_API_WORKERS: the server in N processes
    ("chat_api.devserver",),  # `chat-api dev`
    ("chat_api.cli", "chat_api.__main__"),  # the command
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every chat_api module `path` imports (a `from X import name` counts as X.name when that is a
    module, else X)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "chat_api" or name.startswith("chat_api.")}


def modules() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(path) for path in paths}
    graph = {module_name(path): imports_of(path) & names for path in paths}
    return {name: {target for target in targets if target != name} for name, targets in graph.items()}


def layer_of(module: str) -> int:
    if module == "chat_api":  # the package itself holds only __version__: the ground
        return 0
    found = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert found, f"{module} is in no layer: add it to LAYERS"
    return max(found)[1]  # the most specific prefix


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_no_module_imports_one_of_a_layer_above() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in modules().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_import_circles() -> None:
    graph = modules()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


@pytest.mark.parametrize(
    "path", sorted((REPO / "migrations" / "versions").glob("*.py")), ids=lambda p: p.name
)
def test_migrations_import_nothing_from_the_application(path: Path) -> None:
    assert imports_of(path) == set()


def test_the_checks_see_a_backward_import_and_a_circle(tmp_path: Path) -> None:
    """The rules are not vacuous: an upward edge and a circle in a made-up graph are found."""
    assert layer_of("chat_api.core.db") < layer_of("chat_api.auth.tokens") < layer_of("chat_api.app")
    source = tmp_path / "m.py"
    source.write_text("from chat_api.app import create_app\nimport chat_api.core.db\n")
    assert imports_of(source) == {"chat_api.app", "chat_api.app.create_app", "chat_api.core.db"}
