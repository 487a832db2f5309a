"""``batch --dry-run``: check and price every line of a batch file, then stop.

Nothing paid is sent (no ``queue``) and the folder is neither created nor given a journal.
Prices come from the catalogue, with ``quote`` asked only for a model whose catalogue row
cannot price the line. When the folder holds a batch already, its journal is read (not
written) to tell which lines a real run would queue: those it does not hold yet.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import anyio

from .._ledger.journal import Journal, JournalEntry
from .batch_file import BatchLine, check_batch, plan_batch, sorted_problems
from .connect import command_clock, endpoint, need_key, open_session
from .console import say
from .exits import ExitCode
from .folder import JOURNAL_NAME
from .output import emit, json_mode

__all__ = ["dry_run", "report_problems"]

_LINE = re.compile(r"^line (\d+):")


def report_problems(args: argparse.Namespace, problems: Sequence[str]) -> None:
    """Say every problem of the batch file (``--json``: a ``problem`` object each too)."""
    say(f"{args.file}: {len(problems)} problem(s); nothing was sent:")
    for problem in problems:
        say(f"  {problem}")
        if json_mode(args):
            found = _LINE.match(problem)
            emit("problem", line=int(found.group(1)) if found else None, message=problem)


async def _recorded(args: argparse.Namespace, out: Path) -> tuple[list[JournalEntry], float]:
    """The rows of the folder's journal and what they spent; none when it has no journal."""
    path = out / JOURNAL_NAME
    if not await anyio.Path(path).exists():
        return [], 0.0
    async with await Journal.open(path, clock=command_clock(args), create=False) as journal:
        return await journal.entries(), await journal.estimated_spend_usd()


async def dry_run(
    args: argparse.Namespace, lines: list[BatchLine], problems: list[str], out: Path
) -> int:
    """Check and price ``lines`` against the catalogue; print the total; send nothing paid."""
    if await anyio.Path(out).exists() and not await anyio.Path(out).is_dir():
        say(f"--out {out} is a file, not a folder")
        return ExitCode.INVALID_INPUT
    recorded, spent = await _recorded(args, out)
    async with endpoint(args) as (url, key, clock):
        if not need_key(key):
            return ExitCode.AUTHENTICATION
        async with open_session(args, url, key, clock) as session:
            catalogue = {m.id: m for m in await session.models()}
            problems = sorted_problems(problems, check_batch(lines, catalogue))
            if problems:
                report_problems(args, problems)
                return ExitCode.INVALID_INPUT
            prices = [
                await session.estimate_cost(line.request, model=catalogue[line.request.model])
                for line in lines
            ]
    fresh = {line.number for line, _ in plan_batch(lines, recorded).fresh}
    unpriced = [line.number for line, usd in zip(lines, prices, strict=True) if usd is None]
    total = sum(usd for usd in prices if usd is not None)
    new_total = sum(
        usd for line, usd in zip(lines, prices, strict=True) if usd and line.number in fresh
    )
    limit = args.max_spend
    # A run with nothing new to queue pays nothing more, whatever the folder spent.
    within = None if limit is None else not new_total or spent + new_total <= limit
    if json_mode(args):
        for line, usd in zip(lines, prices, strict=True):
            emit(
                "plan",
                line=line.number,
                name=line.name,
                model=line.request.model,
                usd=usd,
                new=line.number in fresh,
            )
        emit(
            "estimate",
            lines=len(lines),
            new_lines=len(fresh),
            usd=round(total, 6),
            new_usd=round(new_total, 6),
            unpriced=unpriced,
            spent_usd=round(spent, 6),
            max_spend_usd=limit,
            within_max_spend=within,
        )
    headline = f"dry run: {len(lines)} line(s) checked, estimated ${total:.2f} in all"
    if json_mode(args):
        say(headline)
    else:
        print(headline)  # the result, as quote's price is
    _tell(out, len(lines), len(fresh), new_total, unpriced, spent)
    if within is False:
        say(
            f"a real run would exceed --max-spend ${limit:.2f}: ${spent:.2f} spent in {out} "
            f"plus ${new_total:.2f} to queue"
        )
        return ExitCode.SPEND_LIMIT
    return ExitCode.OK


def _tell(
    out: Path,
    lines: int,
    new: int,
    new_total: float,
    unpriced: Sequence[int],
    spent: float,
) -> None:
    say("nothing was sent: no job was queued or paid for")
    if new < lines:
        say(
            f"{lines - new} of them are in {out}'s journal already: a run would queue "
            f"{new} new line(s), estimated ${new_total:.2f} (${spent:.2f} spent there so far)"
        )
    if unpriced:
        shown = ", ".join(str(n) for n in unpriced[:10]) + (", ..." if len(unpriced) > 10 else "")
        say(f"no price known for {len(unpriced)} line(s) (line {shown}): not in the total")
