"""The fake server's jobs, kept in a file so that a later server (another process) knows them.

``FakeServer(state_path=...)`` appends one JSON line per change: a job queued (its id, model,
request, timeline, price, audio kind and queue time) or its media released or deleted. A new
server with the same ``state_path`` replays the file when it starts, so ``retrieve`` of a job
queued by a process that has since died (Ctrl-C, ``kill -9``) answers as Venice would: still
running, or finished with its audio. That is what lets ``venice-audio resume DIR --fake``
finish what ``batch DIR --fake`` started.

Queue times are stored in the server clock's virtual epoch with its time scale, so a server
with another scale converts them through real time; a :class:`ScaledClock`'s epoch is the
same in every process. Each line is flushed when written, so a killed process loses at most
the line it was writing, which is skipped on reading. The credential that queued a job is
never stored: a restored job answers to any accepted key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import attrs

from venice_audio_async._core.clock import Clock

from ._types import FakeJob, JobScript

__all__ = ["JobStore"]


def _scale(clock: Clock) -> float:
    scale = getattr(clock, "scale", 1.0)
    return float(scale) if isinstance(scale, (int, float)) else 1.0


class JobStore:
    """Appends job changes to a JSON Lines file and replays them for a new server."""

    def __init__(self, path: str | os.PathLike[str], clock: Clock) -> None:
        self.path = Path(path)
        self._clock = clock
        self._file: IO[str] | None = None
        self._open = False

    def load(self) -> dict[str, FakeJob]:
        """The jobs the file describes (none if it does not exist), on this server's clock.

        Raises:
            OSError: the file exists but cannot be read.
        """
        jobs: dict[str, FakeJob] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return jobs
        for line in text.splitlines():
            try:
                event = json.loads(line)
                self._replay(event, jobs)
            except (ValueError, TypeError, KeyError):
                continue  # a line torn by a killed process, or not ours: skipped
        return jobs

    def _replay(self, event: dict[str, Any], jobs: dict[str, FakeJob]) -> None:
        kind = event["event"]
        if kind == "queued":
            job = self._job(event)
            jobs[job.queue_id] = job
        elif kind == "deleted" and event["queue_id"] in jobs:
            job = jobs[event["queue_id"]]
            job.deleted = True
            job.released = job.released or bool(event.get("released"))

    def _job(self, event: dict[str, Any]) -> FakeJob:
        # Through real time, so a server with another time scale sees the same moment.
        real = float(event["queued_at"]) * float(event.get("time_scale", 1.0))
        clock = self._clock
        queued_at = clock.monotonic() - (clock.time() - real / _scale(clock))
        tone = event.get("tone_seconds")
        return FakeJob(
            queue_id=str(event["queue_id"]),
            model=str(event["model"]),
            body=dict(event["body"]),
            queued_at=queued_at,
            script=JobScript(**event["script"]),
            cost_usd=float(event["cost_usd"]),
            audio_format=str(event["audio_format"]),
            tone_seconds=float(tone) if tone is not None else None,
        )

    def open(self) -> None:
        """Start recording; the file (and its folder) is created with the first change."""
        self._open = True

    def close(self) -> None:
        """Stop recording (idempotent)."""
        self._open = False
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def _append(self, event: dict[str, Any]) -> None:
        """Write one change.

        Raises:
            OSError: the file cannot be created or written.
        """
        if not self._open:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()  # in the OS's hands: survives the process being killed

    def queued(self, job: FakeJob) -> None:
        """Record a new job (before its queue answer is sent)."""
        clock = self._clock
        self._append(
            {
                "event": "queued",
                "queue_id": job.queue_id,
                "model": job.model,
                "body": dict(job.body),
                "queued_at": clock.time() - (clock.monotonic() - job.queued_at),
                "time_scale": _scale(clock),
                "script": attrs.asdict(job.script),
                "cost_usd": job.cost_usd,
                "audio_format": job.audio_format,
                "tone_seconds": job.tone_seconds,
            }
        )

    def deleted(self, job: FakeJob) -> None:
        """Record that a job's media is gone (released by ``complete``, or deleted)."""
        self._append({"event": "deleted", "queue_id": job.queue_id, "released": job.released})
