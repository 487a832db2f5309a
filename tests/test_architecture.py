"""The layering docs/architecture.md describes holds: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import venice_audio_async

PACKAGE = Path(venice_audio_async.__file__).parent


def _runtime_imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, third-party top-level packages) imported when ``path`` runs.

    Imports under ``if TYPE_CHECKING:`` only exist for the type checker and are left out.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            ours.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            theirs.update(alias.name.split(".")[0] for alias in node.names)
    return ours, theirs


MODULES = {path.stem: _runtime_imports(path) for path in PACKAGE.glob("*.py")}


def test_only_the_transport_imports_aiohttp() -> None:
    """aiohttp stays below _http.py: no other module of the client imports it."""
    users = sorted(name for name, (_, theirs) in MODULES.items() if "aiohttp" in theirs)
    assert users == ["_http"]


def test_no_part_reaches_back_into_the_session() -> None:
    """The session's parts never import it; only the package and the CLI do."""
    importers = sorted(name for name, (ours, _) in MODULES.items() if "_session" in ours)
    assert importers == ["__init__", "__main__"]


def test_there_is_no_import_cycle() -> None:
    """The modules form layers: following imports never leads back to where it started."""
    graph = {name: ours & MODULES.keys() for name, (ours, _) in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name in done:
            return
        for dependency in sorted(graph[name]):
            visit(dependency, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
