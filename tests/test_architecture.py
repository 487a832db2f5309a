"""The layering docs/architecture.md describes holds: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import venice_audio_async

PACKAGE = Path(venice_audio_async.__file__).parent


#: The modules the rules are about: the package's own and the CLI's (``_cli.batch``, ...).
#: A package's ``__init__`` is named by the package (``_cli``), the top one ``__init__``.
FILES = {
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): path
    for path in (*PACKAGE.glob("*.py"), *PACKAGE.glob("_cli/*.py"))
}


def _imported_modules(name: str, node: ast.ImportFrom) -> set[str]:
    """The modules of ours a relative ``from ... import ...`` in module ``name`` loads.

    Within a subpackage that is the submodule (``_cli.drive``), else the top-level module.
    A name that is no module (``from .. import __version__``) names no module of ours.
    """
    package = ["_cli"] if name == "_cli" else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    targets = [node.module] if node.module else [alias.name for alias in node.names]
    found = set()
    for target in targets:
        parts = [*base, *target.split(".")]
        submodule = ".".join(parts[:2])
        found.add(submodule if submodule in FILES else parts[0])
    return found


def _runtime_imports(name: str, path: Path) -> tuple[set[str], set[str]]:
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
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            ours |= _imported_modules(name, node)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            theirs.update(alias.name.split(".")[0] for alias in node.names)
    return ours, theirs


MODULES = {name: _runtime_imports(name, path) for name, path in FILES.items()}


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
    """The session's parts never import it; only the package, the CLI's connect and the
    synchronous client (which runs one) do."""
    importers = sorted(name for name, (ours, _) in MODULES.items() if "_session" in ours)
    assert importers == ["__init__", "_cli.connect", "_sync"]


def test_the_library_never_imports_the_command_line() -> None:
    """The CLI sits on top: only ``__main__`` and the CLI's own modules import from it."""

    def in_cli(module: str) -> bool:
        return module == "_cli" or module.startswith("_cli.")

    importers = sorted(
        name
        for name, (ours, _) in MODULES.items()
        if any(in_cli(module) for module in ours) and not in_cli(name)
    )
    assert importers == ["__main__"]


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
