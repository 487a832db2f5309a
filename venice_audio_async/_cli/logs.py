"""``--log-level``: the library's log records printed to stderr for the command's run."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["logging_to_stderr"]


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (tests replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a handler must never raise into the code that logs
            self.handleError(record)


@contextlib.contextmanager
def logging_to_stderr(level: str | None) -> Iterator[None]:
    """With ``--log-level``, the library's records at that level and above go to stderr."""
    if level is None:
        yield
        return
    logger = logging.getLogger("venice_audio_async")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.setLevel(level.upper())
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
