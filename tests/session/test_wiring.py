"""How a session's parts are connected: one of each shared part."""

from __future__ import annotations

import ast
from pathlib import Path

import venice_audio_async

PACKAGE = Path(venice_audio_async.__file__).parent


def _constructions(name: str) -> list[str]:
    """``module:line`` of every call ``name(...)`` in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called == name:
                found.append(f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno}")
    return found


def test_the_session_builds_the_one_retrier_and_hands_it_to_the_scheduler() -> None:
    # One retry loop per session: backoff, jitter and token-wait counts in one place, so
    # `complete` (sent by the scheduler) and `queue` / `quote` / `models` share them.
    sites = _constructions("Retrier")
    assert [site.split(":")[0] for site in sites] == ["_session/wiring.py"], sites
