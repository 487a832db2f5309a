"""The command line: ``python -m venice_audio_async`` (or ``venice-audio``).

Commands: ``models``, ``quote``, ``generate``, ``fetch``, ``batch`` and ``resume``.
``--fake`` runs any of them against the built-in
:class:`~venice_audio_async.testing.FakeServer`, with no key and no network; its audio is
playable (WAV tones of the requested length), and for ``batch`` and ``resume`` its jobs are
kept in the batch folder, so ``resume DIR --fake`` finishes what ``batch ... --fake``
started. ``--redis URL`` (or ``VENICE_REDIS_URL``) makes ``generate``, ``batch`` and
``resume`` share one request budget with every other process on the key. Exit codes: 0 all
done, 1 some jobs failed or are unknown, 2 bad input or setup (arguments are checked before
any server is contacted), 3 refused by the spending limit, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from . import __version__
from ._batch import BatchLine, check_batch, manifest_rows, read_batch, sorted_problems
from ._clock import Clock, ScaledClock, SystemClock
from ._config import DEFAULT_BASE_URL
from ._errors import (
    JournalError,
    SpendLimitExceeded,
    VeniceError,
)
from ._journal import JobState, Journal, JournalEntry
from ._models import (
    AudioModel,
    AudioResult,
    DurationsPricing,
    Failed,
    GenerationPricing,
    Job,
    PerSecondPricing,
    PerThousandCharactersPricing,
    Succeeded,
)
from ._progress import BatchProgress
from ._redis_budget import RedisBudget
from ._session import AsyncSession

__all__ = ["main"]

JOURNAL_NAME = ".venice-journal.sqlite3"
MANIFEST_NAME = "manifest.jsonl"
#: Where ``--fake`` keeps its jobs in a batch folder, so a later ``resume --fake`` knows them.
FAKE_STATE_NAME = ".venice-fake-server.jsonl"
_FAKE_KEY = "fake-key"
#: What to tell the user if the command is interrupted (set by the command as it goes).
_interrupt_note: list[str] = []
_AUDIO_SUFFIXES = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a", ".aac")


def _say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- connection


def _demo_script(body: Mapping[str, Any]) -> Any:
    """Job timelines for --fake: 20-60 "seconds" by model, spread like real runs."""
    from .testing import JobScript

    means = {"elevenlabs-music": 60.0, "ace-step-15": 45.0, "stable-audio-25": 30.0}
    mean = means.get(str(body.get("model")), 20.0)
    duration = random.lognormvariate(0.0, 0.1) * mean
    return JobScript(duration=duration, average_execution_time=mean * 1.1)


def _clock(args: argparse.Namespace) -> Clock:
    """The clock of the command: real time, or the fake server's scaled time."""
    if args.fake:
        return ScaledClock(_fake_scale(args))
    return SystemClock() if args.time_scale == 1.0 else ScaledClock(args.time_scale)


def _fake_scale(args: argparse.Namespace) -> float:
    return float(args.time_scale) if args.time_scale != 1.0 else 0.01


@contextlib.asynccontextmanager
async def _endpoint(
    args: argparse.Namespace, *, fake_state: Path | None = None
) -> AsyncIterator[tuple[str, str | None, Clock]]:
    """The base URL, key and clock to use: the real API, a given URL, or a fresh fake.

    The fake serves playable WAV tones; with ``fake_state`` it keeps its jobs in that file
    (and knows those an earlier run kept there).
    """
    clock = _clock(args)
    if args.fake:
        from .testing import FakeServer

        scale = _fake_scale(args)
        async with FakeServer(
            time_scale=scale, job_script=_demo_script, audio="tones", state_path=fake_state
        ) as server:
            _say(f"using the built-in fake server at {server.url} (time x{1 / scale:g})")
            yield server.url, _FAKE_KEY, clock
        return
    yield args.base_url, args.api_key or os.environ.get("VENICE_API_KEY"), clock


def _need_key(key: str | None) -> bool:
    if key:
        return True
    _say(
        "No API key. Set one with\n"
        "    export VENICE_API_KEY=your-key     (create it at https://venice.ai/settings/api)\n"
        "or pass --api-key, or try everything offline with --fake."
    )
    return False


def _session(
    args: argparse.Namespace,
    url: str,
    key: str | None,
    clock: Clock,
    **options: Any,
) -> AsyncSession:
    if getattr(args, "redis", None):
        # One budget for every process on this key (the session closes it).
        options.setdefault("budget", RedisBudget.from_url(args.redis, api_key=key, clock=clock))
    return AsyncSession(
        api_key=key,
        base_url=url,
        clock=clock,
        allow_insecure_http=args.allow_insecure_http,
        **options,
    )


def _folder_session(
    args: argparse.Namespace,
    url: str,
    key: str | None,
    clock: Clock,
    out: Path,
    journal: Journal | None = None,
) -> AsyncSession:
    """A session writing into a batch folder, with the folder's journal."""
    return _session(
        args,
        url,
        key,
        clock,
        journal=journal if journal is not None else out / JOURNAL_NAME,
        output_dir=out,
        max_spend_usd=args.max_spend,
    )


# --------------------------------------------------------------------------- models / quote


def _price_shape(model: AudioModel) -> str:
    pricing = model.spec.pricing
    if isinstance(pricing, DurationsPricing):
        tiers = sorted(pricing.tiers.values(), key=lambda t: t.usd)
        return f"${tiers[0].usd:g}-${tiers[-1].usd:g} by duration" if tiers else "by duration"
    if isinstance(pricing, GenerationPricing):
        return f"${pricing.usd:g} per job"
    if isinstance(pricing, PerSecondPricing):
        return f"${pricing.usd:.5g} per second"
    if isinstance(pricing, PerThousandCharactersPricing):
        return f"${pricing.usd:.3g} per 1k chars"
    return "unknown"


def _duration(model: AudioModel) -> str:
    spec = model.spec
    if spec.duration_options:
        return ",".join(str(d) for d in spec.duration_options) + " s"
    if spec.min_duration is not None or spec.max_duration is not None:
        return f"{spec.min_duration:g}-{spec.max_duration:g} s"
    return "-"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


async def _cmd_models(args: argparse.Namespace) -> int:
    async with _endpoint(args) as (url, key, clock), _session(args, url, key, clock) as session:
        models = await session.models()
    rows = [
        [
            m.id,
            m.name,
            _price_shape(m),
            _duration(m),
            str(len(m.spec.voices)) if m.spec.voices else "-",
        ]
        for m in sorted(models, key=lambda m: m.id)
    ]
    _print_table(["id", "name", "price", "duration", "voices"], rows)
    return 0


async def _cmd_quote(args: argparse.Namespace) -> int:
    async with _endpoint(args) as (url, key, clock), _session(args, url, key, clock) as session:
        result = await session.quote(
            args.model, duration_seconds=args.duration, character_count=args.characters
        )
    print(f"${result.quote:.4f}")
    return 0


# --------------------------------------------------------------------------- generate


def _request_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "lyrics_prompt": args.lyrics,
        "duration_seconds": args.duration,
        "force_instrumental": args.instrumental,
        "loop": args.loop,
        "voice": args.voice,
        "speed": args.speed,
    }
    return {k: v for k, v in options.items() if v is not None}


def _audio_target(out: str) -> Path:
    """Check ``--out`` of one audio file before anything is sent: a folder, or a file path.

    Raises:
        ValueError: the file's folder does not exist.
    """
    target = Path(out)
    if target.is_dir():
        return target
    if not target.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {target.parent} does not exist")
    return target


def _named_by_container(audio: AudioResult, target: Path) -> Path:
    """The file, renamed if ``--out`` named a file whose extension is not the container's.

    Files are always named by the container actually received: ``--out rain.mp3`` that
    receives WAV becomes ``rain.wav`` (and ``--out take1`` becomes ``take1.wav``), with a
    notice. A folder ``--out`` is named right by the library already.
    """
    path = audio.path
    assert path is not None
    wanted = f".{audio.format}"
    if target.is_dir() or path.suffix.lower() == wanted:
        return path
    if path.suffix.lower() in (*_AUDIO_SUFFIXES, ""):
        fixed = path.with_suffix(wanted)
    else:
        fixed = path.with_name(path.name + wanted)  # "take.v2" is a name, not a container
    path.replace(fixed)
    _say(f"the audio is {audio.format.upper()}, so it was saved as {fixed.name}, not {path.name}")
    return fixed


def _fetch_hint(args: argparse.Namespace, jobs: Sequence[Job]) -> str:
    if not jobs:
        return "interrupted before anything was queued; nothing was spent"
    if args.fake:
        return "interrupted; the built-in fake server stopped with its job"
    commands = "\n".join(
        f"    venice-audio fetch {job.queue_id} --model {job.model} --out {args.out}"
        for job in jobs
    )
    return (
        "interrupted; the job was queued (and is paid for) and keeps running at Venice. "
        f"Fetch its audio later with:\n{commands}"
    )


async def _cmd_generate(args: argparse.Namespace) -> int:
    target = _audio_target(args.out)
    _interrupt_note[:] = [_fetch_hint(args, [])]
    async with _endpoint(args) as (url, key, clock):
        if not _need_key(key):
            return 2
        async with _session(args, url, key, clock) as session:
            try:
                job = await session.submit(
                    args.model, args.prompt, destination=target, **_request_options(args)
                )
                _interrupt_note[:] = [_fetch_hint(args, [job])]
                _say(f"queued {job.queue_id} ({job.model}); waiting...")
                audio = await session.wait_for(job)
            finally:
                # generate keeps no journal: a job queued as Ctrl-C came is named here.
                if session.unfinished():
                    _interrupt_note[:] = [_fetch_hint(args, session.unfinished())]
    print(_named_by_container(audio, target))
    return 0


async def _cmd_fetch(args: argparse.Namespace) -> int:
    target = _audio_target(args.out)
    _interrupt_note[:] = ["interrupted; the job is still at Venice: run the same fetch again"]
    async with _endpoint(args) as (url, key, clock):
        if not _need_key(key):
            return 2
        async with _session(args, url, key, clock) as session:
            job = session.attach(args.model, args.queue_id, destination=target)
            _say(f"fetching {job.queue_id} ({job.model}); waiting until it is done...")
            audio = await session.wait_for(job)
    print(_named_by_container(audio, target))
    return 0


# --------------------------------------------------------------------------- batch / resume


def _manifest_length(path: Path) -> int:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0


def _check_manifest(out: Path, rows: int) -> None:
    """Refuse to go on when the journal has fewer lines than the folder's manifest lists.

    The journal only ever gains rows, so fewer means it lost some (replaced, truncated):
    the manifest may be the only list left of their queue ids, so it is never replaced.
    """
    kept = _manifest_length(out / MANIFEST_NAME)
    if rows < kept:
        raise JournalError(
            f"refusing to replace {out / MANIFEST_NAME} ({kept} rows) with {rows} rows: "
            f"the journal {out / JOURNAL_NAME} has fewer jobs than the manifest lists, so it "
            "was damaged or replaced. The manifest was kept as it was (it lists the queue "
            "ids of the jobs the journal no longer has); move the journal away and use the "
            "manifest to see what was paid for",
            path=str(out / JOURNAL_NAME),
        )


def _write_manifest(out: Path, rows: list[dict[str, Any]]) -> None:
    _check_manifest(out, len(rows))
    temp = out / f".{MANIFEST_NAME}.part"
    with temp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    temp.replace(out / MANIFEST_NAME)


async def _finish_manifest(session: AsyncSession, out: Path) -> dict[str, int]:
    journal = session.journal
    assert journal is not None
    with anyio.CancelScope(shield=True):
        await journal.flush()  # writes delayed by a busy database, if any, land first
        rows = manifest_rows(await journal.entries())
        await anyio.to_thread.run_sync(_write_manifest, out, rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


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


def _summary(out: Path, counts: Mapping[str, int], watcher: _Watcher) -> int:
    for failure in watcher.failures:
        _say(f"  failed: {failure}")
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    _say(f"manifest: {out / MANIFEST_NAME} ({parts})")
    finished = counts.get("succeeded", 0)
    return 0 if finished == sum(counts.values()) else 1


def _fake_mismatch(args: argparse.Namespace, out: Path, entries: Sequence[JournalEntry]) -> bool:
    """Refuse to mix the real API and the built-in fake in one batch folder (True: refused).

    Queue ids of one are unknown to the other, which would answer them "invalid" and so
    mark jobs failed in the journal: real, paid jobs among them.
    """
    fake_folder = (out / FAKE_STATE_NAME).exists()
    if fake_folder and not args.fake:
        _say(
            f"{out} holds a batch made with the built-in fake server: add --fake to go on "
            "with it (or use a new --out folder for the real API)"
        )
        return True
    if args.fake and not fake_folder and any(e.queue_id for e in entries):
        _say(
            f"{out} holds a batch queued at the real API: the built-in fake server does not "
            "know its jobs. Leave out --fake to go on with it"
        )
        return True
    return False


def _batch_folder(out: Path) -> bool:
    """Check ``--out`` of a batch before any server starts (False: refused, said why)."""
    if out.exists() and not out.is_dir():
        _say(f"--out {out} is a file, not a folder")
        return False
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _say(f"cannot create the folder {out}: {error.strerror}")
        return False
    if (out / MANIFEST_NAME).exists() and not (out / JOURNAL_NAME).exists():
        _say(
            f"{out} has a {MANIFEST_NAME} but no journal ({JOURNAL_NAME}): starting over "
            "would queue (and pay for) its jobs again. Use a new --out folder, or move the "
            "manifest away if you mean to start over"
        )
        return False
    return True


async def _cmd_batch(args: argparse.Namespace) -> int:
    lines, problems = await anyio.to_thread.run_sync(read_batch, args.file)
    if not lines:  # unreadable, or no line to check against the rules: no server needed
        _report_problems(args.file, problems)
        return 2
    out = Path(args.out)
    if not await anyio.to_thread.run_sync(_batch_folder, out):
        return 2
    if _fake_mismatch(args, out, []):
        return 2
    async with _endpoint(args, fake_state=out / FAKE_STATE_NAME) as (url, key, clock):
        if not _need_key(key):
            return 2
        async with _folder_session(args, url, key, clock, out) as session:
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
    if _fake_mismatch(args, out, recorded):
        return 2
    # Before new lines are added: a journal that lost rows would otherwise re-queue them.
    await anyio.to_thread.run_sync(_check_manifest, out, len(manifest_rows(recorded)))
    known = {entry.key for entry in recorded}
    fresh = [line for line in lines if line.key not in known]
    spent = session.spending()[0]

    def plan(estimate: float) -> None:
        _say(
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
        _say(
            f"the estimate ${refused.estimate_usd:.2f} exceeds --max-spend "
            f"${refused.limit_usd:.2f}; nothing was spent"
        )
        return 3
    plan(estimate)
    return await _drive(args, session, out, total=len(lines))


def _report_problems(source: str, problems: Sequence[str]) -> None:
    _say(f"{source}: {len(problems)} problem(s); nothing was sent:")
    for problem in problems:
        _say(f"  {problem}")


def _report_resume(unknown: Sequence[Any], failed: Sequence[Any]) -> None:
    for entry in unknown:
        label = entry.key or f"job {entry.id}"
        _say(
            f"  {label}: its queue answer was lost; it may exist and be billed, so it is not "
            "sent again (pass --requeue-unknown to send it anyway)"
        )
    for entry in failed:
        _say(f"  {entry.key or entry.queue_id}: failed earlier: {entry.error}")


def _has_work(entries: Sequence[JournalEntry], *, requeue_unknown: bool) -> bool:
    """Whether ``resume`` would send or poll anything for these journal entries."""
    to_do = {JobState.INTENT, JobState.QUEUED}
    if requeue_unknown:
        to_do |= {JobState.SENDING, JobState.UNKNOWN}
    return any(entry.state in to_do for entry in entries)


async def _nothing_to_resume(out: Path, entries: Sequence[JournalEntry]) -> int:
    rows = manifest_rows(entries)
    await anyio.to_thread.run_sync(_write_manifest, out, rows)
    if not rows:
        _say(f"nothing to resume: the batch in {out} has no lines")
        return 0
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    _say(f"nothing to resume: every line of the batch in {out} is finished ({parts})")
    _report_resume(
        [e for e in entries if e.state in (JobState.SENDING, JobState.UNKNOWN)],
        [e for e in entries if e.state in (JobState.FAILED, JobState.REJECTED)],
    )
    _say(f"manifest: {out / MANIFEST_NAME}")
    return 0 if counts.get("succeeded", 0) == len(rows) else 1


async def _cmd_resume(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    journal_path = out / JOURNAL_NAME
    if not await anyio.Path(out).is_dir():
        _say(f"{out} is not a folder: nothing to resume")
        return 2
    if not await anyio.Path(journal_path).exists():
        _say(
            f"nothing to resume: {out} holds no batch (it has no {JOURNAL_NAME}). "
            f"Start one with: venice-audio batch FILE --out {out}"
        )
        return 2
    # Opened before any server, without creating: an empty, damaged, read-only or busy
    # journal is refused (JournalError, exit 2) before anything is sent or rewritten.
    async with await Journal.open(journal_path, clock=_clock(args), create=False) as journal:
        entries = await journal.entries()
        if _fake_mismatch(args, out, entries):
            return 2
        if not _has_work(entries, requeue_unknown=args.requeue_unknown):
            return await _nothing_to_resume(out, entries)
        async with _endpoint(args, fake_state=out / FAKE_STATE_NAME) as (url, key, clock):
            if not _need_key(key):
                return 2
            async with _folder_session(args, url, key, clock, out, journal) as session:
                return await _drive(args, session, out, total=len(entries))


async def _drive(args: argparse.Namespace, session: AsyncSession, out: Path, *, total: int) -> int:
    """Queue what the journal has not sent, fetch what is running, write the manifest."""
    journal = session.journal
    assert journal is not None
    lines = len(manifest_rows(await journal.entries()))
    await anyio.to_thread.run_sync(_check_manifest, out, lines)  # before anything is sent
    again = f"venice-audio resume {out}" + (" --fake" if args.fake else "")
    _interrupt_note[:] = [
        f"interrupted. Every queued job is recorded in the journal; finish it with: {again}"
    ]
    watcher = _Watcher(session, BatchProgress(total, plain=args.plain))
    failure: Exception | None = None
    try:
        with watcher.progress:
            async with anyio.create_task_group() as tg:

                def follow(job: Job) -> None:
                    label = job.request.prompt[:40] if job.request else job.queue_id
                    tg.start_soon(watcher.watch, job, label)

                try:
                    report = await session.resume(
                        requeue_unknown=args.requeue_unknown, on_job=follow
                    )
                except Exception as exc:  # raised below as itself, not in an ExceptionGroup
                    failure = exc
                    tg.cancel_scope.cancel()
                else:
                    watcher.progress.done += report.skipped
                    watcher.progress.failed += len(report.failed) + len(report.unknown)
                    watcher.progress.refresh()
    finally:
        counts = await _finish_manifest(session, out)
    if failure is not None:
        raise failure
    _report_resume(report.unknown, report.failed)
    if report.spend_limit is not None:
        _say(
            f"spending limit reached: {report.spend_limit}. Stopped queueing; "
            f"{report.not_queued} line(s) not queued (raise --max-spend and resume)."
        )
        _summary(out, counts, watcher)
        return 3
    return _summary(out, counts, watcher)


# --------------------------------------------------------------------------- parser


def _number(kind: type[float] | type[int], *, positive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number, above 0 (``positive``) or at least 0."""
    bound = "above 0" if positive else "0 or more"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="venice-audio", description="Generate music, sound effects and voice with Venice.ai."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--fake",
        action="store_true",
        help="use the built-in fake server: no key, no network, no cost; playable WAV tones",
    )
    common.add_argument("--base-url", default=DEFAULT_BASE_URL, help="API base URL")
    common.add_argument("--api-key", help="API key (default: $VENICE_API_KEY)")
    common.add_argument(
        "--allow-insecure-http", action="store_true", help="allow plain http to remote hosts"
    )
    common.add_argument(
        "--time-scale",
        type=_number(float, positive=True),
        default=1.0,
        metavar="SCALE",
        help="real seconds per clock second, to match a time-scaled fake server (testing)",
    )
    common.add_argument("--plain", action="store_true", help="plain progress lines, no bar")
    common.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        help="print the library's log to stderr from this level on (debug: every request)",
    )
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get("VENICE_REDIS_URL") or None,
        help="share one request budget with every process on this key through Redis "
        "(default: $VENICE_REDIS_URL; needs the redis extra)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", parents=[common], help="list the audio models")

    quote = commands.add_parser("quote", parents=[common], help="price one generation")
    quote.add_argument("model", help="model id (see: venice-audio models)")
    quote.add_argument(
        "--duration", type=_number(int, positive=True), help="length in seconds to price"
    )
    quote.add_argument(
        "--characters",
        type=_number(int, positive=True),
        help="characters of text to price (voice models)",
    )

    generate = commands.add_parser("generate", parents=[common, shared], help="make one audio file")
    generate.add_argument("model", help="model id (see: venice-audio models)")
    generate.add_argument("prompt", help="what to make (voice models: the text to speak)")
    generate.add_argument(
        "--out",
        default=".",
        help=(
            "an existing folder to write into, or a file path; the file's extension is set "
            "to the audio actually received (default: .)"
        ),
    )
    _request_arguments(generate)

    fetch = commands.add_parser(
        "fetch", parents=[common], help="download the audio of a job queued earlier"
    )
    fetch.add_argument("queue_id", help="the job's queue id (from generate, or the manifest)")
    fetch.add_argument("--model", required=True, help="the model the job was queued with")
    fetch.add_argument(
        "--out",
        default=".",
        help="an existing folder to write into, or a file path (default: .)",
    )

    batch = commands.add_parser(
        "batch", parents=[common, shared], help="generate every line of a file"
    )
    batch.add_argument("file", help="JSON Lines or CSV file of requests")
    batch.add_argument("--out", required=True, help="folder for the audio and manifest.jsonl")
    _batch_arguments(batch)

    resume = commands.add_parser(
        "resume", parents=[common, shared], help="finish an interrupted batch"
    )
    resume.add_argument("dir", help="the batch's --out folder")
    _batch_arguments(resume)
    return parser


def _request_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--duration",
        type=_number(int, positive=True),
        help="length in seconds (models with a duration)",
    )
    command.add_argument("--lyrics", help="song lyrics (models that take lyrics)")
    command.add_argument(
        "--instrumental",
        action="store_true",
        default=None,
        help="no vocals (models that support it)",
    )
    command.add_argument(
        "--loop", action="store_true", default=None, help="make it loop seamlessly (if supported)"
    )
    command.add_argument("--voice", help="voice name (voice models; see: venice-audio models)")
    command.add_argument(
        "--speed",
        type=_number(float, positive=True),
        help="speaking speed, 1.0 is normal (voice models)",
    )


def _batch_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--max-spend",
        type=_number(float, positive=False),
        metavar="USD",
        help="refuse to spend more than this in the folder, over all runs (USD)",
    )
    command.add_argument(
        "--requeue-unknown",
        action="store_true",
        help="send again jobs whose queue answer was lost (may pay twice)",
    )


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "models": _cmd_models,
    "quote": _cmd_quote,
    "generate": _cmd_generate,
    "fetch": _cmd_fetch,
    "batch": _cmd_batch,
    "resume": _cmd_resume,
}


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (tests replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a handler must never raise into the code that logs
            self.handleError(record)


@contextlib.contextmanager
def _logging_to_stderr(level: str | None) -> Iterator[None]:
    """With ``--log-level``, the library's records at that level and above go to stderr."""
    if level is None:
        yield
        return
    logger = logging.getLogger("venice_audio_async")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.setLevel(level.upper())
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


async def _interruptible(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    """Run ``command``; the first Ctrl-C (or SIGTERM) cancels it through anyio.

    A plain asyncio task cancellation would cut through the session's shielded sections;
    an anyio cancellation respects them, so a ``queue`` call already on the wire still gets
    its answer recorded before the command stops. A second Ctrl-C stops at once.
    """
    interrupted = False
    code = 130
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            code = await command(args)
        except Exception as exc:  # re-raised below as itself, not inside an ExceptionGroup
            failure = exc
        tg.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    if failure is not None:
        raise failure
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    _interrupt_note.clear()
    try:
        with _logging_to_stderr(args.log_level):
            return anyio.run(_interruptible, _COMMANDS[args.command], args, backend="asyncio")
    except KeyboardInterrupt:
        _say("\n" + (_interrupt_note[0] if _interrupt_note else "interrupted"))
        return 130
    except (VeniceError, ValueError, ImportError) as error:  # ImportError: --redis, no extra
        _say(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
