"""The poller's pacing against the retrieve window (the budget's views, no tokens taken)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import anyio
import pytest

from venice_audio_async._core.config import RateLimit
from venice_audio_async._polling.estimator import PollingBounds
from venice_audio_async._polling.policy import PollPolicy
from venice_audio_async._polling.scheduler import SHARE_SECONDS, WindowPacer
from venice_audio_async._polling.tracked import TrackedJob
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


def _stated(clock: ManualClock, limit: int, remaining: int, reset_in: float) -> dict[str, str]:
    """Headers stating ``remaining`` of ``limit`` left until ``reset_in`` seconds from now."""
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": str(round((clock.time() + reset_in) * 1000)),
    }


def test_with_other_clients_what_is_left_is_spread_to_the_reset() -> None:
    """20 polls of ours, one every 0.5 s; the API then says 10 of 120 are left for the next
    21.5 s. Another client made the other 90: the poller spreads the 10 evenly until the
    reset (one every 2 s from its last poll) instead of spending them as its own window
    allows, so the key's window does not run dry. Alone (the API counts only ours) the
    budget's own pacing is all."""
    for others in (0, 90):
        clock = ManualClock()
        budget = LocalBudget(clock=clock, rates={"retrieve": RateLimit(per_minute=120)})
        pacer = WindowPacer(PollPolicy(PollingBounds()), budget)
        for _ in range(20):
            assert budget.try_acquire_now("retrieve")
            last = clock.monotonic()
            clock.advance(0.5)
        left = 120 - 20 - others
        budget.learn("retrieve", 200, _stated(clock, 120, left, reset_in=21.5))
        window = budget.window("retrieve")
        assert window is not None
        assert window.others == others
        pacer.maybe_reprice(clock.monotonic(), [], lambda job: None)
        if others == 0:
            assert pacer.token_ready() == budget.next_available("retrieve")
        else:
            assert abs(pacer.token_ready() - (last + 22.0 / 11)) < 1e-3


class SharedBudget(LocalBudget):
    """A budget shared with other processes that want ``others`` polls at every horizon;
    counts the trades without a token (``exchange_demand``) and what was published."""

    def __init__(self, others: float, **options: Any) -> None:
        super().__init__(**options)
        self.others = others
        self.trades = 0
        self.published: list[tuple[float, ...]] = []

    def share_demand(self, endpoint: str, demand: Sequence[float]) -> tuple[float, ...] | None:
        self.published.append(tuple(demand))
        return (self.others,) * len(demand)

    async def exchange_demand(self, endpoint: str) -> None:
        self.trades += 1


def test_a_share_given_is_the_users_word_on_the_others_part() -> None:
    """With ``retrieve_share`` below 1 the user has set the others' part aside: the API's
    count of other clients does not spread the poller's polls on top of it."""
    clock = ManualClock()
    budget = LocalBudget(clock=clock, rates={"retrieve": RateLimit(per_minute=120)})
    pacer = WindowPacer(PollPolicy(PollingBounds(retrieve_share=0.9)), budget)
    for _ in range(20):
        assert budget.try_acquire_now("retrieve")
        clock.advance(0.5)
    budget.learn("retrieve", 200, _stated(clock, 120, 10, reset_in=21.5))
    pacer.maybe_reprice(clock.monotonic(), [], lambda job: None)
    assert pacer.token_ready() == budget.next_available("retrieve")


def test_processes_sharing_a_budget_spread_what_is_left_of_the_window() -> None:
    """Sharing a budget with processes that want polls too, the poller spreads what is
    left of the shared window evenly until it frees (its oldest grant leaves): 100 of 120
    used since 0.0, the last at 49.5 s, so the 20 left go one every 0.52 s, not as fast as
    the window would take them; with nobody else wanting polls, nothing is held."""
    for others, spread in ((0.0, False), (200.0, True)):
        clock = ManualClock()
        rates = {"retrieve": RateLimit(per_minute=120, burst=120)}  # the window alone
        budget = SharedBudget(others, clock=clock, rates=rates)
        pacer = WindowPacer(PollPolicy(PollingBounds()), budget)
        for _ in range(100):
            assert budget.try_acquire_now("retrieve")
            last = clock.monotonic()
            clock.advance(0.5)
        pacer.maybe_reprice(clock.monotonic(), [], lambda job: None)
        if spread:
            assert pacer.token_ready() == pytest.approx(last + (60.5 - last) / 21)
        else:
            assert pacer.token_ready() == budget.next_available("retrieve")


class _Unknown:
    """A running job whose model nothing is known of yet (it wants no polls of the price)."""

    belief = None


def test_a_process_whose_polls_wait_still_trades_and_reprices() -> None:
    """Sharing a budget, the demand is traded before a poll is priced, and every
    SHARE_SECONDS while jobs run with none due, at the floor price too, re-pricing each
    time: so the others keep hearing this process's demand as it stands (a process whose
    jobs are not due yet still wants polls soon), and it prices its next poll on theirs as
    it stands (traded only with its own grants, both went stale exactly while its polls
    waited). Nothing running and nothing due: nothing traded."""
    clock = ManualClock()
    budget = SharedBudget(200.0, clock=clock, rates={"retrieve": RateLimit(per_minute=120)})
    policy = PollPolicy(PollingBounds())
    pacer = WindowPacer(policy, budget)
    running = [cast(TrackedJob, _Unknown())]

    async def share(*, due: bool, live: Sequence[TrackedJob] = running) -> None:
        await pacer.share(clock, live, lambda job: None, due=due)

    anyio.run(functools.partial(share, due=False, live=[]))
    assert (budget.trades, budget.published) == (0, [])
    anyio.run(functools.partial(share, due=True))  # a poll is about to be priced
    assert (budget.trades, len(budget.published)) == (1, 1)
    assert policy.price > policy.bounds.delay_per_poll  # the others' demand raised it
    for step in range(1, 7):  # its polls wait, none due
        clock.advance(SHARE_SECONDS / 2)
        anyio.run(functools.partial(share, due=False))
        assert budget.trades == 1 + step // 2
    assert len(budget.published) == 4  # re-priced with each trade
    # At the floor price, jobs running and none due: still traded every SHARE_SECONDS.
    quiet = SharedBudget(0.0, clock=clock, rates={"retrieve": RateLimit(per_minute=120)})
    quiet_pacer = WindowPacer(PollPolicy(PollingBounds()), quiet)
    for _ in range(4):
        anyio.run(functools.partial(quiet_pacer.share, clock, running, lambda j: None, due=False))
        clock.advance(SHARE_SECONDS)
    assert quiet.trades == 4
