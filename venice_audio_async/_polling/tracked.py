"""What the scheduler knows of one tracked job, and the heap that orders jobs by due time.

:class:`TrackedJob` is the scheduler's record of one paid ``queue_id``: what the policy reads
to price its next poll (start, last poll, belief), where its outcome waits until taken, and
its place in the :class:`DueHeap`.

The heap is lazy: re-keying a job pushes a new entry and marks the old one stale (its
sequence number no longer matches the job's ``entry``), so a re-key is O(log n) and stale
entries are dropped when they reach the top.
"""

from __future__ import annotations

import heapq
import itertools
import math

import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._core.audio import SinkFactory
from .._core.config import RetryPolicy
from .._core.models import Job, Processing, RetrieveRequest
from .._core.outcomes import Outcome
from .release import ReleaseMedia
from .run_time_belief import RunTimeBelief

__all__ = ["DueHeap", "TrackedJob"]

#: Seconds within which two due times count as the same (keys are float sums of times).
EPSILON = 1e-9


@attrs.define(eq=False)
class TrackedJob:
    """One job the scheduler polls or holds the outcome of. Internal."""

    job: Job
    sink_factory: SinkFactory
    tracked_at: float
    started: float
    deadline_at: float | None  # a clock.monotonic() reading: the job ends unfinished then
    prompt: bool  # attached or resumed: its first poll goes out at once
    seen_running_at_age: float = 0.0
    last_poll: float = -math.inf
    hint: float | None = None  # the server's latest average_execution_time for this job
    belief: RunTimeBelief | None = None
    belief_version: int = -1
    failures: int = 0  # failed polls in a row (the backoff grows with them)
    unreached_since: float | None = None  # the first poll of a run with no word from the API
    answer: tuple[int, str] | None = None  # the API's last 500 / 503 (status, message)
    repeats: int = 0  # how many times in a row ``answer`` came
    in_flight: bool = False
    outcome: Outcome | None = None
    finished_at: float = math.inf  # clock time its outcome was reached
    subscribers: list[MemoryObjectSendStream[Outcome]] = attrs.field(factory=list)
    entry: int = -1  # heap entry sequence that is current; older entries are stale
    keyed_due: float = math.inf  # the due time of the current entry
    keyed_price: float = 0.0  # the price, and the model's fit version, it was keyed at
    keyed_version: int = -1
    capped: bool = False  # keyed before it is really due (a horizon cap): check at pop
    far: bool = False  # keyed beyond the sweep's horizon (see Scheduler._schedule)
    evicted: bool = False  # finished, its in-memory audio dropped: fetched again on demand
    slot: int = -1  # index in Scheduler._live while in flight
    last_status: Processing | None = None  # the latest "still running" answer
    forgotten: bool = False  # session.forget: never polled again
    retry: RetryPolicy | None = None  # its own policy (session.with_options), else the session's
    release: ReleaseMedia | None = None  # its own release_media, else the session's

    retrieve: RetrieveRequest | None = None  # its poll's request, built once

    def request(self, *, delete: bool) -> RetrieveRequest:
        """The job's ``retrieve`` request (``delete``: ask the server to delete the media
        once it hands it over)."""
        request = self.retrieve
        if request is None:
            job = self.job
            request = self.retrieve = RetrieveRequest(
                model=job.model, queue_id=job.queue_id, delete_media_on_completion=delete or None
            )
        return request

    def answered(self) -> None:
        """A poll got an answer from the API about the job: its run of failures ends."""
        self.failures = 0
        self.unreached_since = None
        self.answer = None
        self.repeats = 0

    @property
    def waiting(self) -> bool:
        """Still to be polled: no outcome yet and not forgotten."""
        return self.outcome is None and not self.forgotten


class DueHeap:
    """Jobs by the time their next poll is due (a binary heap with lazy deletion)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TrackedJob]] = []
        self._seq = itertools.count()
        self.pushes = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, tracked: TrackedJob, due: float) -> bool:
        """Key ``tracked`` at ``due`` (its older entries go stale). Returns whether it is
        now the head: a loop sleeping towards a later job should wake."""
        tracked.entry = next(self._seq)
        tracked.keyed_due = due
        self.pushes += 1
        heapq.heappush(self._heap, (due, tracked.entry, tracked))
        return self._heap[0][1] == tracked.entry

    def head(self) -> TrackedJob | None:
        """The job due first, dropping stale entries (re-keyed, finished or forgotten)."""
        heap = self._heap
        while heap:
            _, entry, tracked = heap[0]
            if tracked.entry == entry and tracked.outcome is None:
                return tracked
            heapq.heappop(heap)
        return None

    def head_due(self) -> float:
        """The due time of the head (call after :meth:`head` returned a job)."""
        return self._heap[0][0]

    def pop_head(self) -> TrackedJob:
        """Remove and return the head (call after :meth:`head` returned a job)."""
        _, _, tracked = heapq.heappop(self._heap)
        tracked.entry = -1
        return tracked

    def stale_head(self) -> bool:
        """Whether the top entry is stale (many of them: a mass re-key just happened)."""
        return bool(self._heap) and self._heap[0][2].entry != self._heap[0][1]

    def keyed_before(self, limit: float) -> list[TrackedJob]:
        """The waiting jobs keyed at or before ``limit``.

        Found by walking the heap from its root and pruning past ``limit`` (a heap's
        children are never due before their parent), so the work grows with the jobs
        keyed that soon, not with all jobs.
        """
        heap = self._heap
        found: list[TrackedJob] = []
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            due, entry, tracked = heap[i]
            if due > limit:
                continue
            if tracked.entry == entry and tracked.outcome is None:
                found.append(tracked)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    stack.append(child)
        return found
