"""``batch FILE --out DIR``: check every line, journal them all, then run the folder.

Nothing is sent while any line breaks a rule. Every line is journaled before the first is
sent, so ``resume`` can finish whatever a crash leaves; a new batch over ``--max-spend``
is refused whole (exit 3, nothing spent).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .._batch import BatchLine, check_batch, manifest_rows, read_batch, sorted_problems
from .._errors import SpendLimitExceeded
from .connect import endpoint, folder_session, need_key
from .console import say
from .drive import drive
from .folder import FAKE_STATE_NAME, check_batch_folder, fake_mismatch
from .manifest import check_manifest

if TYPE_CHECKING:
    from .._session import AsyncSession

__all__ = ["cmd_batch"]


def _report_problems(source: str, problems: Sequence[str]) -> None:
    say(f"{source}: {len(problems)} problem(s); nothing was sent:")
    for problem in problems:
        say(f"  {problem}")


async def cmd_batch(args: argparse.Namespace) -> int:
    """``batch``: generate every line of a file into a folder, with a journal and manifest."""
    lines, problems = await anyio.to_thread.run_sync(read_batch, args.file)
    if not lines:  # unreadable, or no line to check against the rules: no server needed
        _report_problems(args.file, problems)
        return 2
    out = Path(args.out)
    if not await anyio.to_thread.run_sync(check_batch_folder, out):
        return 2
    if fake_mismatch(args, out, []):
        return 2
    async with endpoint(args, fake_state=out / FAKE_STATE_NAME) as (url, key, clock):
        if not need_key(key):
            return 2
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
        _report_problems(args.file, problems)
        return 2
    journal = session.journal
    assert journal is not None
    recorded = await journal.entries()
    if fake_mismatch(args, out, recorded):
        return 2
    # Before new lines are added: a journal that lost rows would otherwise re-queue them.
    await anyio.to_thread.run_sync(check_manifest, out, len(manifest_rows(recorded)))
    known = {entry.key for entry in recorded}
    fresh = [line for line in lines if line.key not in known]
    spent = session.spending()[0]

    def plan(estimate: float) -> None:
        say(
            f"{len(lines)} request(s); {len(fresh)} to queue, estimated ${estimate:.2f}"
            + (f" (${spent:.2f} already spent in {out})" if known else "")
        )

    # Every line is journaled before the first is sent, so a crash at any point leaves a
    # journal that `resume` can finish: nothing is queued twice, nothing is forgotten. A
    # new batch over --max-spend is refused whole; a resumed one queues what still fits.
    try:
        estimate = await session.journal_requests(
            [line.request for line in fresh],
            keys=[line.key for line in fresh],
            names=[line.name for line in fresh],
            destination=out,
            all_or_nothing=not known,
        )
    except SpendLimitExceeded as refused:
        plan(refused.estimate_usd)
        say(
            f"the estimate ${refused.estimate_usd:.2f} exceeds --max-spend "
            f"${refused.limit_usd:.2f}; nothing was spent"
        )
        return 3
    plan(estimate)
    return await drive(args, session, out, total=len(lines))
