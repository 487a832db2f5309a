"""The layering docs/architecture.md describes holds: who may import what.

The package is a stack of layers, each a subpackage or one module, bottom to top. A module
imports only its own layer and the layers below it, counting imports under
``if TYPE_CHECKING:`` too (a cycle the type checker sees is still a cycle), and following
imports never leads back to where they started, within a layer or between layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import venice_audio_async

PACKAGE = Path(venice_audio_async.__file__).parent

#: The layers, bottom to top. A module's layer is named by the first part of its dotted name
#: (``_rate.budget`` is in ``_rate``); ``__init__`` is the package itself.
LAYERS: list[set[str]] = [
    {"_core"},  # errors, models, outcomes, settings, clocks, audio sinks
    {"_http"},  # the aiohttp transport, bodies, failures, rate-limit headers, deadlines
    {"_client"},  # VeniceClient: one method per endpoint
    {"_rate"},  # request budgets (local, Redis), the retry rule, request limiter
    {"_ledger"},  # spend, the journal and its database, owner lock, replay
    {"_polling"},  # the scheduler, the poll policy, the run-time model, media release
    {"_session"},  # AsyncSession and its parts
    {"_sync"},  # VeniceAudio, which runs an AsyncSession
    {"__init__", "budget", "journal", "types"},  # the public modules
    {"testing"},  # the fake server, and the clocks for tests
    {"_cli", "__main__"},  # the command line, on top of everything
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    """``_rate/budget.py`` -> ``_rate.budget``; a package's ``__init__`` is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


FILES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_package(name: str) -> bool:
    return name == "__init__" or FILES[name].name == "__init__.py"


def _ours(parts: list[str]) -> str:
    """The module of ours that ``parts`` (a dotted target, or a name within one) names."""
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in FILES:
            return name
    return "__init__"


def _imports(name: str, path: Path) -> tuple[set[str], set[str], set[str]]:
    """(our modules imported at run time, ours imported only for the type checker,
    third-party top-level packages imported at run time) by module ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            typing_only.update(id(inner) for inner in ast.walk(node))
    package = [] if name == "__init__" else name.split(".")
    if not _is_package(name):
        package = package[:-1]
    runtime: set[str] = set()
    checking: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(tree):
        found: set[str] = set()
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = package[: len(package) - (node.level - 1)]
            module = node.module.split(".") if node.module else []
            # ``from . import x`` names a module x, or a name of the package itself
            found = {_ours([*base, *module, alias.name]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top, *rest = node.module.split(".")
            if top == "venice_audio_async":
                found = {_ours([*rest, alias.name]) for alias in node.names}
            elif id(node) not in typing_only:
                theirs.add(top)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top, *rest = alias.name.split(".")
                if top == "venice_audio_async":
                    found.add(_ours(rest))
                elif id(node) not in typing_only:
                    theirs.add(top)
        found.discard(name)
        (checking if id(node) in typing_only else runtime).update(found)
    return runtime, checking, theirs


MODULES = {name: _imports(name, path) for name, path in FILES.items()}
#: Every import of ours, those for the type checker included.
GRAPH = {name: runtime | checking for name, (runtime, checking, _) in MODULES.items()}


def _layer(name: str) -> int:
    return LAYER_OF[name.split(".")[0]]


def test_every_module_has_a_layer() -> None:
    """The table covers the package: a new subpackage or top-level module gets a place."""
    assert not sorted(name for name in FILES if name.split(".")[0] not in LAYER_OF)


def test_each_layer_imports_only_itself_and_layers_below() -> None:
    """The order between layers is strict, ``TYPE_CHECKING`` imports included."""
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(name)
    )
    assert not upward


def test_there_is_no_import_cycle() -> None:
    """Following imports (``TYPE_CHECKING`` ones too) never leads back to where it started,
    within a subpackage or between subpackages."""
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name in done:
            return
        for dependency in sorted(GRAPH[name]):
            visit(dependency, (*path, name))
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, ())


def test_the_layers_know_nothing_of_the_subpackages_they_sit_on() -> None:
    """The subpackages' ``__init__`` modules re-export nothing: each module is imported
    by its own name, so a layer never loads a whole subpackage for one name."""
    for name in FILES:
        if _is_package(name) and name.startswith("_") and name not in ("__init__", "_cli"):
            assert not GRAPH[name], name


#: The library: every module but the fake server's (which serves aiohttp.web).
LIBRARY = sorted(name for name in MODULES if name.split(".")[0] != "testing")
#: The transport layer, where aiohttp is allowed.
TRANSPORT = sorted(name for name in MODULES if name.split(".")[0] == "_http")


def test_only_the_transport_imports_aiohttp() -> None:
    """aiohttp stays in ``_http``: no other module of the client imports it."""
    users = sorted(name for name in LIBRARY if "aiohttp" in MODULES[name][2])
    assert "_http.transport" in users
    assert set(users) <= set(TRANSPORT), sorted(set(users) - set(TRANSPORT))


def test_transport_docstrings_name_the_aiohttp_modules() -> None:
    """Each transport module's docstring says truly whether it imports aiohttp."""
    users = [name for name in TRANSPORT if "aiohttp" in MODULES[name][2]]
    for name in TRANSPORT:
        doc = ast.get_docstring(ast.parse(FILES[name].read_text(encoding="utf-8")))
        assert doc is not None, name
        if name in users:
            assert all(f"``{other}``" in doc for other in users if other != name), name
        else:
            assert "does not import aiohttp" in doc, name


def test_no_part_reaches_back_into_the_session() -> None:
    """The session's parts never import the session facade (``_session.session``); the
    package, the synchronous client (which runs one) and the CLI do."""
    importers = sorted(name for name, targets in GRAPH.items() if "_session.session" in targets)
    assert not [name for name in importers if _layer(name) <= _layer("_session")]
    assert {"__init__", "_sync"} <= set(importers)


def test_the_library_never_imports_the_command_line() -> None:
    """The CLI sits on top: only ``__main__`` and the CLI's own modules import from it."""

    def in_cli(module: str) -> bool:
        return module.split(".")[0] == "_cli"

    importers = sorted(
        name
        for name, targets in GRAPH.items()
        if any(in_cli(module) for module in targets) and not in_cli(name)
    )
    assert importers == ["__main__"]


#: The modules of each dependency the package may import: their documented, public API.
#: (``aiohttp.client_proto``, for one, is not: its attributes change between releases.)
PUBLIC_MODULES = {
    "aiohttp": {"aiohttp", "aiohttp.web"},
    "anyio": {
        "anyio",
        "anyio.abc",
        "anyio.from_thread",
        "anyio.lowlevel",
        "anyio.streams.memory",
        "anyio.to_thread",
    },
    "attrs": {"attrs"},
    "cattrs": {"cattrs", "cattrs.gen"},
    "multidict": {"multidict"},
    "redis": {"redis.asyncio", "redis.asyncio.retry", "redis.backoff", "redis.exceptions"},
    "rich": {"rich.console", "rich.progress"},
    "sniffio": {"sniffio"},
    "typing_extensions": {"typing_extensions"},
    "yarl": {"yarl"},
}


def _dependency_modules(path: Path) -> set[str]:
    """Every module of a third-party package that ``path`` imports, by its full name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in PUBLIC_MODULES}


def test_only_public_modules_of_dependencies_are_imported() -> None:
    """Every dependency is used through its public modules, listed in ``PUBLIC_MODULES``
    (the whole package, the fake server and the CLI included)."""
    used = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in PACKAGE.rglob("*.py")
        for module in _dependency_modules(path)
        if module not in PUBLIC_MODULES[module.split(".")[0]]
    }
    assert not used, sorted(used)
