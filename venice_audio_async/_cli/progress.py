"""The command line's live progress display: rich when installed, plain lines otherwise.

Both show an ETA (:meth:`BatchProgress.eta`) and write to stderr, so stdout holds only
results (``--json``'s objects).

The library never imports rich; only the command line does, lazily, so ``rich`` stays an
optional extra (``pip install 'venice-audio-async[cli]'``).
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable
from typing import Any

__all__ = ["BatchProgress"]


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class BatchProgress:
    """Counts done / running / failed, elapsed time, requests used, money spent and an ETA.

    ``clock`` gives real seconds (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self, total: int, *, plain: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.running = 0
        self.requests = 0
        self.spent_usd = 0.0
        #: Real seconds until the slowest running job ends, by the jobs' own estimates
        #: (the server's average_execution_time, learned run times); ``None``: unknown.
        self.jobs_left: float | None = None
        self._clock = clock
        self._started = clock()
        self._last_plain = 0.0
        self._live: Any = None
        self._progress: Any = None
        self._task: Any = None
        if not plain:
            try:
                from rich.console import Console
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
                    TextColumn("eta {task.fields[eta]}"),  # before the detail: never cut off
                    TextColumn("{task.fields[detail]}"),
                    TimeElapsedColumn(),
                    console=Console(stderr=True),  # stdout is for results (--json)
                    transient=False,
                )
                self._task = self._progress.add_task("batch", total=total, detail="", eta="?")

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

    def eta(self) -> float | None:
        """Real seconds until every line is finished, or ``None`` while nothing tells.

        The running jobs end with the slowest of them (``jobs_left``); lines not running
        yet (waiting to be sent) are counted at the pace lines finished so far. The larger
        of the two, since both must be done.
        """
        finished = self.done + self.failed
        left = self.total - finished
        if left <= 0:
            return 0.0
        guesses = [self.jobs_left] if self.jobs_left is not None else []
        if finished and left > self.running:
            guesses.append((self._clock() - self._started) / finished * left)
        return max(guesses) if guesses else None

    def eta_text(self) -> str:
        """The ETA as shown: ``42s``, ``3m05s``, or ``?`` while unknown."""
        eta = self.eta()
        return "?" if eta is None else _duration(eta)

    def detail(self) -> str:
        return (
            f"done {self.done}  running {self.running}  failed {self.failed}  "
            f"requests {self.requests}  spent ${self.spent_usd:.2f}"
        )

    def refresh(self, *, force: bool = False) -> None:
        """Redraw (rich) or print a line at most every 2 s (plain)."""
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=self.done + self.failed,
                detail=self.detail(),
                eta=self.eta_text(),
            )
            return
        now = self._clock()
        if force or now - self._last_plain >= 2.0:
            self._last_plain = now
            elapsed = now - self._started
            finished = self.done + self.failed
            print(
                f"[{elapsed:6.1f}s] {finished}/{self.total}  {self.detail()}  "
                f"eta {self.eta_text()}",
                file=sys.stderr,
                flush=True,
            )
