"""Run a batch folder to its end: queue what the journal has not sent, follow every job.

Shared by ``batch`` (after it journaled the file's lines) and ``resume``: the session's
``resume`` sends and attaches the journal's jobs, a watcher follows each to its outcome
with the progress display, and the manifest is written however the run ends.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .._core.models import Job
from .._core.outcomes import Failed, Succeeded
from .._ledger.journal import JournalEntry
from .batch_file import manifest_rows
from .console import on_interrupt, say
from .folder import MANIFEST_NAME, unwritable_folder
from .manifest import check_manifest, finish_manifest, state_parts
from .progress import BatchProgress

if TYPE_CHECKING:
    from .._session.resume import ResumeReport
    from .._session.session import AsyncSession

__all__ = ["drive", "report_resume"]


class _Watcher:
    """Follows jobs to their outcome and keeps the progress display current."""

    def __init__(self, session: AsyncSession, progress: BatchProgress) -> None:
        self.session = session
        self.progress = progress
        self.failures: list[str] = []

    def _update(self) -> None:
        self.progress.requests = sum(self.session.statistics().requests.values())
        self.progress.spent_usd = self.session.spending()[0]
        self.progress.refresh()

    async def watch(self, job: Job, label: str) -> None:
        self.progress.running += 1
        self._update()
        try:
            outcome = await self.session.wait_outcome(job)
        finally:
            self.progress.running -= 1
        if isinstance(outcome, Succeeded):
            self.progress.done += 1
        elif isinstance(outcome, Failed):
            self.progress.failed += 1
            self.failures.append(f"{label}: {outcome.error}")
        self._update()


def report_resume(unknown: Sequence[JournalEntry], failed: Sequence[JournalEntry]) -> None:
    """Name the jobs not sent again (their queue answer was lost) and those failed earlier."""
    for entry in unknown:
        label = entry.key or f"job {entry.id}"
        say(
            f"  {label}: its queue answer was lost; it may exist and be billed, so it is not "
            "sent again (pass --requeue-unknown to send it anyway)"
        )
    for entry in failed:
        say(f"  {entry.key or entry.queue_id}: failed earlier: {entry.error}")


def _summary(out: Path, counts: Mapping[str, int], watcher: _Watcher) -> int:
    for failure in watcher.failures:
        say(f"  failed: {failure}")
    say(f"manifest: {out / MANIFEST_NAME} ({state_parts(counts)})")
    finished = counts.get("succeeded", 0)
    return 0 if finished == sum(counts.values()) else 1


async def _follow(
    args: argparse.Namespace, session: AsyncSession, watcher: _Watcher
) -> ResumeReport:
    """Resume the session's journal, watching each job it hands over; the resume report.

    An error of ``resume`` is raised as itself, not inside an ExceptionGroup.
    """
    failure: Exception | None = None
    report: ResumeReport | None = None
    with watcher.progress:
        async with anyio.create_task_group() as tg:

            def follow(job: Job) -> None:
                label = job.request.prompt[:40] if job.request else job.queue_id
                tg.start_soon(watcher.watch, job, label)

            try:
                report = await session.resume(requeue_unknown=args.requeue_unknown, on_job=follow)
            except Exception as exc:
                failure = exc
                tg.cancel_scope.cancel()
            else:
                watcher.progress.done += report.skipped
                watcher.progress.failed += len(report.failed) + len(report.unknown)
                watcher.progress.refresh()
    if failure is not None:
        raise failure
    assert report is not None
    return report


async def drive(args: argparse.Namespace, session: AsyncSession, out: Path, *, total: int) -> int:
    """Queue what the journal has not sent, fetch what is running, write the manifest."""
    journal = session.journal
    assert journal is not None
    lines = len(manifest_rows(await journal.entries()))
    await anyio.to_thread.run_sync(check_manifest, out, lines)  # before anything is sent
    problem = await anyio.to_thread.run_sync(unwritable_folder, out)
    if problem is not None:  # found now, not when the manifest is written after paying
        say(problem)
        return 2
    again = f"venice-audio resume {out}" + (" --fake" if args.fake else "")
    on_interrupt(
        f"interrupted. Every queued job is recorded in the journal; finish it with: {again}"
    )
    watcher = _Watcher(session, BatchProgress(total, plain=args.plain))
    try:
        report = await _follow(args, session, watcher)
    finally:
        counts = await finish_manifest(session, out)
    report_resume(report.unknown, report.failed)
    if report.spend_limit is not None:
        say(
            f"spending limit reached: {report.spend_limit}. Stopped queueing; "
            f"{report.not_queued} line(s) not queued (raise --max-spend and resume)."
        )
        _summary(out, counts, watcher)
        return 3
    return _summary(out, counts, watcher)
