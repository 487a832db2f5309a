"""The command line's live progress display: rich when installed, plain lines otherwise.

The library never imports rich; only the command line does, lazily, so ``rich`` stays an
optional extra (``pip install 'venice-audio-async[cli]'``).
"""

from __future__ import annotations

import sys
import time
import types
from typing import Any

__all__ = ["BatchProgress"]


class BatchProgress:
    """Counts done / running / failed, elapsed time, requests used and money spent."""

    def __init__(self, total: int, *, plain: bool = False) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.running = 0
        self.requests = 0
        self.spent_usd = 0.0
        self._started = time.monotonic()
        self._last_plain = 0.0
        self._live: Any = None
        self._progress: Any = None
        self._task: Any = None
        if not plain:
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )
            except ImportError:  # the cli extra is not installed: plain lines
                pass
            else:
                self._progress = Progress(
                    TextColumn("[bold]generating"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[detail]}"),
                    TimeElapsedColumn(),
                    transient=False,
                )
                self._task = self._progress.add_task("batch", total=total, detail="")

    def __enter__(self) -> BatchProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.refresh(force=True)
        if self._progress is not None:
            self._progress.stop()

    def detail(self) -> str:
        return (
            f"done {self.done}  running {self.running}  failed {self.failed}  "
            f"requests {self.requests}  spent ${self.spent_usd:.2f}"
        )

    def refresh(self, *, force: bool = False) -> None:
        """Redraw (rich) or print a line at most every 2 s (plain)."""
        if self._progress is not None:
            self._progress.update(
                self._task, completed=self.done + self.failed, detail=self.detail()
            )
            return
        now = time.monotonic()
        if force or now - self._last_plain >= 2.0:
            self._last_plain = now
            elapsed = now - self._started
            finished = self.done + self.failed
            print(
                f"[{elapsed:6.1f}s] {finished}/{self.total}  {self.detail()}",
                file=sys.stderr,
                flush=True,
            )
