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


#: The transport layer: ``_http`` (the pool and each request) and its ``_http_*`` parts.
TRANSPORT = sorted(name for name in MODULES if name == "_http" or name.startswith("_http_"))


def test_only_the_transport_imports_aiohttp() -> None:
    """aiohttp stays in the transport (_http, _http_*): no other module of the client imports it."""
    users = sorted(name for name, (_, theirs) in MODULES.items() if "aiohttp" in theirs)
    assert "_http" in users
    assert set(users) <= set(TRANSPORT), sorted(set(users) - set(TRANSPORT))


def test_transport_docstrings_name_the_aiohttp_modules() -> None:
    """Each transport module's docstring says truly whether it imports aiohttp."""
    users = [name for name in TRANSPORT if "aiohttp" in MODULES[name][1]]
    for name in TRANSPORT:
        doc = ast.get_docstring(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8")))
        assert doc is not None, name
        if name in users:
            assert all(f"``{other}``" in doc for other in users if other != name), name
        else:
            assert "does not import aiohttp" in doc, name


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
