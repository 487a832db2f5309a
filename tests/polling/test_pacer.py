"""The poller's pacing against the retrieve window (the budget's views, no tokens taken)."""

from __future__ import annotations

import anyio

from venice_audio_async._core.config import RateLimit
from venice_audio_async._polling.estimator import PollingBounds
from venice_audio_async._polling.policy import PollPolicy
from venice_audio_async._polling.scheduler import WindowPacer
from venice_audio_async._rate.budget import LocalBudget
from venice_audio_async.budget import BudgetStatistics
from venice_audio_async.testing import ManualClock


class TickingClock(ManualClock):
    """A manual clock that moves a microsecond at every reading, as a real one does."""

    def monotonic(self) -> float:
        self.advance(1e-6)
        return super().monotonic()


class CountingBudget(LocalBudget):
    """Counts full snapshots (they are what a poll should not pay for)."""

    snapshots = 0

    def statistics(self) -> BudgetStatistics:
        self.snapshots += 1
        return super().statistics()


def test_a_free_budget_is_not_paused_and_takes_no_snapshot() -> None:
    """With tokens free, the pause check answers from next_available alone, even though
    the clock moved between the budget's reading and the pacer's."""
    clock = TickingClock()
    budget = CountingBudget(clock=clock, rates={"retrieve": RateLimit(per_minute=120, burst=120)})
    pacer = WindowPacer(PollPolicy(PollingBounds()), budget)
    assert not pacer.paused(clock)
    assert budget.snapshots == 0


def test_a_429_pause_is_seen() -> None:
    """After a 429 with Retry-After the session is paused until it passes."""
    clock = TickingClock()
    budget = CountingBudget(clock=clock, rates={"retrieve": RateLimit(per_minute=120, burst=120)})
    pacer = WindowPacer(PollPolicy(PollingBounds()), budget)
    anyio.run(budget.record_response, "retrieve", 429, {"retry-after": "5"})
    assert pacer.paused(clock)
    clock.advance(6.0)
    assert not pacer.paused(clock)
