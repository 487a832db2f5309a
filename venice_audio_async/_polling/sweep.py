"""Re-keying the jobs whose next poll may have come earlier: the scheduler's sweep.

When the price falls or a model's fit moves, due times may come earlier; keys may err early
but never late (see :mod:`._scheduler`), so those jobs must be re-keyed. The jobs keyed
within the scheduler's horizon are found by walking the heap from its root and pruning at
the horizon (a heap's children are never due before their parent), so the work grows with
the jobs due soon, not with all jobs; jobs keyed further out are looked at only when their
model's fit moved a lot (:class:`~._model_fits.Reach`). Those near go first, and a large
re-key is spread over loop passes (:data:`SLICE` jobs each) so that it never stalls other
tasks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from .._core.clock import Clock
from .model_fits import Reach
from .tracked import EPSILON, DueHeap, TrackedJob

__all__ = ["Sweep"]

SLICE = 1024  # jobs a sweep re-keys per event-loop pass


class Sweep:
    """The jobs still to re-key, and the rule for re-keying them. Internal; one per
    scheduler, which hands it how to price a job (``due``) and key it (``schedule``)."""

    def __init__(
        self,
        heap: DueHeap,
        by_model: Mapping[str, Mapping[str, TrackedJob]],
        clock: Clock,
        horizon: float,
        due: Callable[[TrackedJob, float], float],
        schedule: Callable[[TrackedJob, float], object],
    ) -> None:
        self._heap = heap
        self._by_model = by_model
        self._clock = clock
        self._horizon = horizon
        self._due = due  # when a job is next worth a poll
        self._schedule = schedule  # key a job at a due time
        self._started = False  # the price fell or a fit moved: re-key jobs due soon
        self._models: set[str] = set()  # fits that moved a lot: re-key all their jobs
        self._rekey: deque[TrackedJob] = deque()  # jobs still to look at

    @property
    def pending(self) -> bool:
        """Whether jobs may wait to be re-keyed (the loop sweeps before it sleeps)."""
        return self._started or bool(self._rekey)

    def start(self, reach: Reach, model: str) -> bool:
        """A change reaching ``reach`` (of ``model``'s jobs); returns whether a sweep is due."""
        if reach is Reach.NONE:
            return False
        if reach is Reach.ALL:
            self._models.add(model)
        self._started = True
        return True

    def run(self) -> bool:
        """Re-key up to :data:`SLICE` jobs; returns whether some are left to look at."""
        if self._started:
            self._started = False
            horizon = self._clock.monotonic() + self._horizon
            self._rekey.extendleft(self._heap.keyed_before(horizon))
            for model in self._models:
                self._rekey.extend(self._by_model.get(model, {}).values())
            self._models.clear()
        now = self._clock.monotonic()
        rekey = self._rekey
        for _ in range(min(len(rekey), SLICE)):
            tracked = rekey.popleft()
            if tracked.prompt or tracked.failures or tracked.in_flight or not tracked.waiting:
                continue  # going out at once anyway, backing off after an error, or polled
            due = self._due(tracked, now)
            if due < tracked.keyed_due - EPSILON:
                self._schedule(tracked, due)
        return bool(rekey)
