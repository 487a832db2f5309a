"""What the package's docstrings and comments point to, a user of the package has."""

from __future__ import annotations

from pathlib import Path

import pytest

import venice_audio_async

PACKAGE = Path(venice_audio_async.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))

#: Design notes and the wire contract the project is built from: outside the repository.
NOTES = ("POLLING.md", "AUDIO_API.md", "DESIGN.md", "STYLE.md", "../shared")


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_cites_notes_a_user_does_not_have(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not [note for note in NOTES if note in text], _name(path)


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_sends_the_reader_to_a_readme_section(path: Path) -> None:
    # The README is short now; its former sections are pages of docs/.
    assert "README's" not in path.read_text(encoding="utf-8"), _name(path)
