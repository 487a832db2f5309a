"""What a session has done so far: :class:`SessionStatistics` and how one is assembled.

The figures live in the parts that do the work (the scheduler counts jobs, the budget
429s and pauses, the recorder requests, the ledger spend and journal writes, the retrier
the submits waiting for a token); :class:`StatisticsCollector` reads them into one frozen
snapshot, taking no token and sending nothing, so progress displays may call it often.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .._core.clock import Clock
from .._ledger.ledger import Ledger
from .._polling.scheduler import Scheduler
from .._rate.budget import RequestBudget, ResponseRecorder
from .._rate.retry import Retrier
from .status import expected_token_wait

__all__ = ["SessionStatistics", "StatisticsCollector"]


@attrs.frozen
class SessionStatistics:
    """A snapshot of what the session has done (see :meth:`AsyncSession.statistics`).

    .. versionadded:: 0.1.0
    """

    #: Jobs queued (paid for) and still running: polled until they end.
    jobs_in_flight: int
    #: Jobs that ended with their audio stored or in memory.
    jobs_succeeded: int
    #: Jobs that ended with an error (the generation failed, a deadline passed, ...).
    jobs_failed: int
    #: Finished outcomes nobody has taken yet (they wait for ``results()``/``wait_for()``).
    outcomes_untaken: int
    #: Requests sent so far, per endpoint (``"queue"``, ``"retrieve"``, ...).
    requests: Mapping[str, int]
    #: 429 answers received.
    rate_limited: int
    #: Seconds the whole session spent paused by rate limits and the error budget.
    paused_seconds: float
    #: Jobs whose media was released on the server (``complete``) after it was stored.
    media_released: int
    #: Estimated USD spent by this session and, with a journal, by earlier runs on it.
    spent_usd: float = 0.0
    #: The ``max_spend_usd`` limit, or ``None`` without one.
    spend_limit_usd: float | None = None
    #: Journal writes that failed when made after a job was paid for (each logged as a
    #: warning naming the job); they are retried until they land.
    journal_write_failures: int = 0
    #: Of those, the ones not landed yet.
    journal_writes_pending: int = 0
    #: Submits waiting here for a ``queue`` token right now.
    submits_waiting: int = 0
    #: Seconds the last of them is expected to wait for its token (0 when none waits).
    expected_queue_wait: float = 0.0

    @property
    def retrieves_per_finished_job(self) -> float:
        """Mean ``retrieve`` calls per finished job (1.0 is the ideal)."""
        finished = self.jobs_succeeded + self.jobs_failed
        return self.requests.get("retrieve", 0) / finished if finished else 0.0


class StatisticsCollector:
    """Reads the parts' figures into a :class:`SessionStatistics`."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        budget: RequestBudget,
        recorder: ResponseRecorder,
        ledger: Ledger,
        retrier: Retrier,
        clock: Clock,
    ) -> None:
        self._scheduler = scheduler
        self._budget = budget
        self._recorder = recorder
        self._ledger = ledger
        self._retrier = retrier
        self._clock = clock

    def snapshot(self) -> SessionStatistics:
        """The figures as they are now."""
        counts = self._scheduler.counts()
        budget = self._budget.statistics()
        spent, limit = self._ledger.spending()
        waiting = self._retrier.waiting["queue"]
        return SessionStatistics(
            jobs_in_flight=counts.in_flight,
            jobs_succeeded=counts.succeeded,
            jobs_failed=counts.failed,
            outcomes_untaken=counts.untaken,
            requests=dict(self._recorder.requests),
            rate_limited=budget.rate_limited,
            paused_seconds=budget.paused_seconds,
            media_released=counts.released,
            spent_usd=spent,
            spend_limit_usd=limit,
            journal_write_failures=self._ledger.write_failures,
            journal_writes_pending=self._ledger.pending_writes,
            submits_waiting=waiting,
            expected_queue_wait=expected_token_wait(
                self._budget, "queue", waiting, self._clock.monotonic()
            ),
        )
