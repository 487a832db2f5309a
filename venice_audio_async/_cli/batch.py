"""``batch FILE --out DIR``: check every line, journal them all, then run the folder.

Nothing is sent while any line breaks a rule; ``--dry-run`` stops after the checks and the
prices (:mod:`.plan`). Every line is journaled before the first is
sent, so ``resume`` can finish whatever a crash leaves; a new batch over ``--max-spend``
is refused whole (exit 3, nothing spent).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .._core.errors import SpendLimitExceeded
from .batch_file import (
    BatchLine,
    check_batch,
    manifest_rows,
    plan_batch,
    read_batch,
    sorted_problems,
)
from .connect import endpoint, folder_session, need_key
from .console import say
from .drive import drive
from .exits import ExitCode
from .folder import FAKE_STATE_NAME, check_batch_folder, fake_mismatch
from .manifest import check_manifest
from .plan import dry_run, report_problems

if TYPE_CHECKING:
    from .._session.session import AsyncSession

__all__ = ["cmd_batch"]


async def cmd_batch(args: argparse.Namespace) -> int:
    """``batch``: generate every line of a file into a folder, with a journal and manifest."""
    lines, problems = await anyio.to_thread.run_sync(read_batch, args.file)
    if not lines:  # unreadable, or no line to check against the rules: no server needed
        report_problems(args, problems)
        return ExitCode.INVALID_INPUT
    out = Path(args.out)
    if args.dry_run:
        return await dry_run(args, lines, problems, out)
    if not await anyio.to_thread.run_sync(check_batch_folder, out):
        return ExitCode.INVALID_INPUT
    if fake_mismatch(args, out, []):
        return ExitCode.INVALID_INPUT
    async with endpoint(args, fake_state=out / FAKE_STATE_NAME) as (url, key, clock):
        if not need_key(key):
            return ExitCode.AUTHENTICATION
        async with folder_session(args, url, key, clock, out) as session:
            return await _run_batch(args, session, lines, problems, out)


async def _run_batch(
    args: argparse.Namespace,
    session: AsyncSession,
    lines: list[BatchLine],
    problems: list[str],
    out: Path,
) -> int:
    catalogue = {m.id: m for m in await session.models()}
    # One round: the file's own problems and every rule broken, in line order.
    problems = sorted_problems(problems, check_batch(lines, catalogue))
    if problems:
        report_problems(args, problems)
        return ExitCode.INVALID_INPUT
    journal = session.journal
    assert journal is not None
    recorded = await journal.entries()
    if fake_mismatch(args, out, recorded):
        return ExitCode.INVALID_INPUT
    # Before new lines are added: a journal that lost rows would otherwise re-queue them.
    await anyio.to_thread.run_sync(check_manifest, out, len(manifest_rows(recorded)))
    # Lines are known by what they send (and the name they give), never by their number:
    # a line moved, inserted or taken from another file is not paid for twice.
    plan = plan_batch(lines, recorded)
    fresh = [line for line, _ in plan.fresh]
    spent = session.spending()[0]

    def tell(estimate: float) -> None:
        if not recorded:
            say(f"{len(lines)} line(s) to queue, estimated ${estimate:.2f}")
            return
        new = (
            f"{len(fresh)} new line(s) to queue, estimated ${estimate:.2f}"
            if fresh
            else "no new line to queue"
        )
        say(
            f"{len(plan.known)} of {len(lines)} line(s) already in this folder's journal; "
            f"{new} (${spent:.2f} already spent in {out})"
        )
        if plan.others:
            say(
                f"{out} also holds {plan.others} line(s) of an earlier batch file that this "
                "file does not have; this run finishes them too, if they are not finished"
            )

    # Every line is journaled before the first is sent, so a crash at any point leaves a
    # journal that `resume` can finish: nothing is queued twice, nothing is forgotten. A
    # new batch over --max-spend is refused whole; into a used folder, lines are queued
    # while the limit allows (then it stops and says so).
    try:
        estimate = await session.journal_requests(
            [line.request for line in fresh],
            keys=[key for _, key in plan.fresh],
            names=[line.name for line in fresh],
            destination=out,
            all_or_nothing=not recorded,
        )
    except SpendLimitExceeded as refused:
        tell(refused.estimate_usd)
        say(
            f"the estimate ${refused.estimate_usd:.2f} exceeds --max-spend "
            f"${refused.limit_usd:.2f}; nothing was spent"
        )
        return ExitCode.SPEND_LIMIT
    tell(estimate)
    # The run follows every line of the folder: this file's and any earlier file's.
    total = len(manifest_rows(await journal.entries()))
    return await drive(args, session, out, total=total)
