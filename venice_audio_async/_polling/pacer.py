"""Pacing the poller against the retrieve window: when a token may be taken, when to re-price.

The :class:`~._policy.PollPolicy` says what a poll must be worth (the price); this module
decides when that price is recomputed from the window (every :data:`REPRICE_SECONDS` while
jobs wait, or after :data:`REPRICE_GRANTS` grants, whichever comes first) and keeps the
poller inside its share of the retrieve limit (``PollingBounds.retrieve_share``), reading
only the budget's synchronous views: it never takes a token itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .._core.clock import Clock
from .._rate.budget import LocalBudget, RequestBudget
from .policy import PollPolicy
from .tracked import TrackedJob

__all__ = ["WindowPacer"]

REPRICE_SECONDS = 0.5  # the window is re-priced at least this often while jobs wait ...
REPRICE_GRANTS = 4  # ... and after this many grants
#: A price below this share of the one jobs were keyed at makes them due sooner: re-key.
PRICE_DROP = 0.9


class WindowPacer:
    """Re-prices the policy from the budget's retrieve window. Internal; one per scheduler."""

    def __init__(self, policy: PollPolicy, budget: RequestBudget) -> None:
        self._policy = policy
        self._budget = budget
        self._repriced_at = -math.inf
        self._grants = 0
        self._keyed_price = policy.price
        # An in-process budget (whose acquire is LocalBudget's) hands a free token over
        # synchronously: the same grant as acquire's, without its cancellation checkpoint.
        self._try_now: Callable[[str], bool] | None = None
        self._session_paused: Callable[[], bool] | None = None
        if isinstance(budget, LocalBudget):
            self._session_paused = budget.session_paused
            if type(budget).acquire is LocalBudget.acquire:
                self._try_now = budget.try_acquire

    @property
    def grants_now(self) -> bool:
        """Whether :meth:`take_token_now` can ever succeed (an in-process budget)."""
        return self._try_now is not None

    def take_token_now(self) -> bool:
        """Take a retrieve token if one is free now from an in-process budget."""
        if self._try_now is None or not self._try_now("retrieve"):
            return False
        self._grants += 1
        return True

    async def take_token(self) -> None:
        """Take a retrieve token for the poller (waiting, FIFO, if none is free)."""
        if not self.take_token_now():
            await self._budget.acquire("retrieve")
            self._grants += 1

    def token_ready(self) -> float:
        """When the poller may take a retrieve token (its share of the window included)."""
        ready = self._budget.next_available("retrieve")
        share = self._policy.bounds.retrieve_share
        if share < 1:
            window = self._budget.window("retrieve")
            if window is not None:
                allowed = max(1, math.floor(share * window.limit))
                inside = len(window.grants)
                if inside >= allowed:
                    ready = max(ready, window.grants[inside - allowed] + window.window)
        return ready

    def paused(self, clock: Clock) -> bool:
        """Whether the whole session is paused right now (a 429, the error budget)."""
        if self._session_paused is not None:
            return self._session_paused()  # an in-process budget's pauses, read directly
        # The clock is read after the budget's own reading: read before, a free budget
        # would look a few microseconds ahead and every poll would take a full snapshot.
        if self._budget.next_available("retrieve") <= clock.monotonic():
            return False  # the common case: no snapshot taken
        stats = self._budget.statistics()
        return stats.paused_until is not None or stats.failure_paused_until is not None

    def wake_at(self, due: float, now: float, *, jobs_waiting: bool) -> float:
        """Sleep towards ``due``, but wake to re-price while the price is raised (it falls
        as grants leave the window, which can make jobs due sooner)."""
        if jobs_waiting and self._policy.price > self._policy.bounds.delay_per_poll:
            return min(due, max(now, self._repriced_at) + REPRICE_SECONDS)
        return due

    def maybe_reprice(
        self, now: float, live: Sequence[TrackedJob], refresh: Callable[[TrackedJob], object]
    ) -> bool:
        """Re-price if it is time; ``refresh`` brings a sampled job's belief up to date.
        Returns whether the price fell enough that jobs keyed earlier should be re-keyed."""
        if now - self._repriced_at < REPRICE_SECONDS and self._grants < REPRICE_GRANTS:
            return False
        self._repriced_at = now
        self._grants = 0
        window = self._budget.window("retrieve")
        sample = self._policy.sample(live) if window is not None else ()
        for tracked in sample:
            refresh(tracked)
        price = self._policy.reprice(now, sample, len(live), window)
        fell = price < PRICE_DROP * self._keyed_price
        self._keyed_price = price
        return fell
