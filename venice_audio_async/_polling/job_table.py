"""Every job a scheduler knows: in flight (still to be polled), or finished and not taken.

The table is the bookkeeping half of the scheduler (the other half decides when to poll):

* ``jobs``: every tracked ``queue_id``, running or holding an outcome nobody took yet;
* ``live``: the jobs still running, in a list the poll policy samples (O(1) removal by
  swapping with the last);
* ``by_model``: the running jobs of each model, oldest first (a refit reads the oldest as
  right-censored).

Outcomes stay here until a caller takes them (:meth:`JobTable.take`); in-memory audio is
counted against the cap by :class:`~._held_audio.HeldAudio`, which may drop the bytes of
the oldest (the job is then *evicted*: finished, downloaded again when wanted).
"""

from __future__ import annotations

import logging
import math

from .._core.audio import SinkFactory
from .._core.models import AudioResult, Job, Outcome, Processing
from .held_audio import HeldAudio
from .tracked import TrackedJob

__all__ = ["JobTable"]

log = logging.getLogger("venice_audio_async")


class JobTable:
    """The scheduler's jobs, by id, by model and in flight. Internal."""

    def __init__(self, held: HeldAudio) -> None:
        self.held = held
        self.jobs: dict[str, TrackedJob] = {}
        self.live: list[TrackedJob] = []
        self.by_model: dict[str, dict[str, TrackedJob]] = {}

    def get(self, queue_id: str) -> TrackedJob | None:
        return self.jobs.get(queue_id)

    def __contains__(self, queue_id: str) -> bool:
        return queue_id in self.jobs

    def outcome_of(self, queue_id: str) -> Outcome | None:
        """The outcome of a job not handed over yet (``None``: running, or unknown)."""
        tracked = self.jobs.get(queue_id)
        return tracked.outcome if tracked else None

    def finished_at(self, queue_id: str) -> float:
        """When the job's outcome was reached (``inf``: not yet, or unknown)."""
        tracked = self.jobs.get(queue_id)
        return tracked.finished_at if tracked is not None and tracked.outcome else math.inf

    def was_taken(self, queue_id: str) -> bool:
        """Whether ``queue_id``'s outcome was handed over recently (bounded record)."""
        return self.held.was_taken(queue_id)

    def add_live(self, tracked: TrackedJob) -> None:
        """Track a running job (new, or evicted and to be downloaded again)."""
        queue_id = tracked.job.queue_id
        self.jobs[queue_id] = tracked
        tracked.slot = len(self.live)
        self.live.append(tracked)
        self.by_model.setdefault(tracked.job.model, {})[queue_id] = tracked

    def end_live(self, tracked: TrackedJob) -> None:
        """Remove a finished or forgotten job from the running views."""
        slot = tracked.slot
        if slot < 0:
            return
        last = self.live.pop()
        if last is not tracked:
            self.live[slot] = last
            last.slot = slot
        tracked.slot = -1
        self.by_model.get(tracked.job.model, {}).pop(tracked.job.queue_id, None)

    def keep(self, outcome: Outcome, sink_factory: SinkFactory, now: float) -> None:
        """Hold an outcome known from elsewhere (the journal) for a caller to take."""
        queue_id = outcome.job.queue_id
        if queue_id in self.jobs:
            return
        self.jobs[queue_id] = TrackedJob(
            job=outcome.job,
            sink_factory=sink_factory,
            tracked_at=now,
            started=now,
            deadline=None,
            prompt=False,
            outcome=outcome,
            finished_at=now,
        )

    def hold_audio(self, tracked: TrackedJob, audio: AudioResult) -> None:
        """Count untaken in-memory audio; over the cap, evict the oldest (kept on the server)."""
        if audio.data is None:
            return
        for queue_id in self.held.hold(tracked.job.queue_id, len(audio.data)):
            victim = self.jobs.get(queue_id)
            if victim is None or victim.outcome is None:
                continue
            log.info(
                "dropped the untaken audio of job %s (over max_untaken_bytes); it is "
                "downloaded again when taken",
                queue_id,
            )
            victim.outcome = None
            victim.evicted = True

    def take(self, queue_id: str) -> TrackedJob | None:
        """A caller took the job's outcome: drop it. Returns the job when its media is to
        be released now (in-memory audio, released once taken)."""
        tracked = self.jobs.get(queue_id)
        if tracked is None or (tracked.outcome is None and not tracked.evicted):
            return None  # (evicted: a stream still held its bytes, and handed them over)
        del self.jobs[queue_id]
        return tracked if self.held.taken(queue_id, tracked.outcome) else None

    def forget(self, queue_id: str) -> TrackedJob | None:
        """Drop a job the caller no longer wants. Returns it if it was still running.

        Raises:
            ValueError: a consumer waits on the job right now.
        """
        tracked = self.jobs[queue_id]
        if tracked.subscribers:
            raise ValueError(f"job {queue_id} is being waited on; leave that wait first")
        del self.jobs[queue_id]
        if tracked.outcome is not None:
            return None
        tracked.forgotten = True
        tracked.entry = -1  # its heap entries are stale now
        self.end_live(tracked)
        return tracked

    def progress(self, queue_id: str) -> tuple[Outcome | None, Processing | None, float] | None:
        """What is known of a tracked job: its outcome (finished, not handed over yet),
        the last "still running" answer, and when it was polled (``clock`` time)."""
        tracked = self.jobs.get(queue_id)
        if tracked is None:
            return None
        return tracked.outcome, tracked.last_status, tracked.last_poll

    def finished(self) -> list[Job]:
        """Jobs with an outcome nobody has taken yet, oldest first."""
        return [t.job for t in self.jobs.values() if t.outcome is not None or t.evicted]

    def unfinished(self) -> list[Job]:
        """Jobs queued (paid for) whose outcome was never reached: keep their ids."""
        return [t.job for t in self.jobs.values() if t.outcome is None and not t.evicted]

    @property
    def untaken(self) -> int:
        """How many finished outcomes wait to be taken."""
        return len(self.jobs) - len(self.live)
