"""``status DIR``: a batch folder's state, read from its journal; nothing is sent.

Each line is counted by its journal state (stored, queued, failed, unknown, not sent),
with the money the folder spent, and what ``resume`` would do with each line, by the
library's own rule (:func:`~venice_audio_async._resume.step_for`), so ``status`` never
promises what ``resume`` would not do. The journal is opened without being created; a
folder whose batch is running now is owned by that process and is refused (exit 4).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import anyio

from .._core.clock import SystemClock
from .._ledger.journal import JobState, Journal
from .._session.resume import Step, has_work, step_for
from .console import say
from .exits import ExitCode
from .folder import FAKE_STATE_NAME, JOURNAL_NAME, MANIFEST_NAME
from .output import emit, json_mode

__all__ = ["cmd_status"]

#: The journal's states as ``status`` counts them.
_STATE_NAMES = {
    JobState.SUCCEEDED: "stored",
    JobState.QUEUED: "queued",
    JobState.FAILED: "failed",
    JobState.REJECTED: "failed",
    JobState.SENDING: "unknown",
    JobState.UNKNOWN: "unknown",
    JobState.INTENT: "not_sent",
}
_STATES = ("stored", "queued", "failed", "unknown", "not_sent")

#: What resume does, as ``status`` says it (``--json`` keys: the step's name, lowercased).
_STEP_WORDS = {
    Step.SEND: "queue",
    Step.SEND_AGAIN: "send again",
    Step.ATTACH: "poll",
    Step.FETCH_AGAIN: "fetch again",
    Step.REPORT_LOST: "report as lost",
    Step.REPORT_FAILED: "report as failed",
    Step.SKIP: "leave as stored",
}


async def cmd_status(args: argparse.Namespace) -> int:
    """``status``: count the folder's lines by state and say what ``resume`` would do."""
    out = Path(args.dir)
    journal_path = out / JOURNAL_NAME
    if not await anyio.Path(journal_path).exists():
        say(f"{out} holds no batch (it has no {JOURNAL_NAME})")
        return ExitCode.INVALID_INPUT
    # Timestamps are not read here: the journal's clock only stamps writes.
    async with await Journal.open(journal_path, clock=SystemClock(), create=False) as journal:
        entries = await journal.entries()
        spent = await journal.estimated_spend_usd()
    states = Counter(_STATE_NAMES[e.state] for e in entries)
    steps = Counter(step_for(e, requeue_unknown=args.requeue_unknown) for e in entries)
    work = has_work(entries, requeue_unknown=args.requeue_unknown)
    command = None
    if work:
        fake = " --fake" if (out / FAKE_STATE_NAME).exists() else ""
        again = " --requeue-unknown" if args.requeue_unknown else ""
        command = f"venice-audio resume {out}{fake}{again}"
    if json_mode(args):
        emit(
            "status",
            folder=str(out),
            manifest=str(out / MANIFEST_NAME),
            lines=len(entries),
            states={name: states.get(name, 0) for name in _STATES},
            spent_usd=round(spent, 6),
            resume={step.name.lower(): steps.get(step, 0) for step in Step},
            has_work=work,
            command=command,
        )
        return ExitCode.OK
    parts = ", ".join(f"{states[n]} {n.replace('_', ' ')}" for n in _STATES if states[n])
    print(f"{out}: {len(entries)} line(s): {parts or 'none'}; ${spent:.2f} spent (estimated)")
    plan = ", ".join(f"{steps[step]} to {_STEP_WORDS[step]}" for step in Step if steps[step])
    if command is None:
        print(f"resume would send nothing ({plan or 'no lines'})")
    else:
        print(f"resume would: {plan}")
        print(f"run: {command}")
    return ExitCode.OK
