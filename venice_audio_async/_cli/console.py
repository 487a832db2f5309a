"""Messages to the user on stderr, and the note to show if the command is interrupted.

Results (a file path, a price, the models table) go to stdout; everything said about the
run goes to stderr, flushed at once so it interleaves with the progress display.
"""

from __future__ import annotations

import sys

__all__ = ["forget_interrupt_note", "interrupt_note", "on_interrupt", "say"]

#: What to tell the user if the command is interrupted (set by the command as it goes).
_interrupt_note: list[str] = []


def say(*parts: object) -> None:
    """Print a message to stderr."""
    print(*parts, file=sys.stderr, flush=True)


def on_interrupt(note: str) -> None:
    """Say ``note`` if the command is interrupted from now on."""
    _interrupt_note[:] = [note]


def interrupt_note() -> str:
    """What to say on interruption: the command's latest note, else a bare "interrupted"."""
    return _interrupt_note[0] if _interrupt_note else "interrupted"


def forget_interrupt_note() -> None:
    """Drop the note of an earlier command (``main`` may run more than once in a process)."""
    _interrupt_note.clear()
