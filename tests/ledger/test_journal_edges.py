"""The journal on its edges: one owner, failed writes, repeated ids, damaged files, leftovers.

Each case is a way a paid job could be lost or paid twice: two processes on one journal,
a database another program holds locked, a server that repeats a ``queue_id``, a journal
that is empty, damaged or read-only, and the temporary files of a killed download.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import venice_audio_async as v
from venice_audio_async.journal import JobState, Journal, JournalEntry
from venice_audio_async.testing import FakeServer, JobScript, ScaledClock, load_default_catalogue
from venice_audio_async.types import FileSink

from ..conftest import API_KEY, TIME_SCALE

pytestmark = pytest.mark.anyio

CLI_SCALE = 0.02  # the CLI subprocess and the fake must agree on the clock

#: A second process that opens a journal, says so, and holds it until its stdin closes.
HOLDER = """
import sys, anyio
from venice_audio_async.journal import Journal
async def main():
    journal = await Journal.open(sys.argv[1])
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)
    await journal.aclose()
anyio.run(main)
"""


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A time-scaled fake server."""
    async with FakeServer(time_scale=TIME_SCALE, api_keys=[API_KEY]) as fake:
        yield fake


@pytest.fixture
async def cli_server() -> AsyncIterator[FakeServer]:
    """A fake server on the CLI's time scale, with short jobs."""
    async with FakeServer(
        time_scale=CLI_SCALE,
        api_keys=[API_KEY],
        job_script=lambda body: JobScript(duration=5.0),
    ) as fake:
        yield fake


def _session(server: FakeServer | str, **kwargs: Any) -> v.AsyncSession:
    options: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": server if isinstance(server, str) else server.url,
        "clock": ScaledClock(TIME_SCALE),
    }
    options.update(kwargs)
    return v.AsyncSession(**options)


def _cli(server: FakeServer, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "venice_audio_async",
        *args,
        "--base-url",
        server.url,
        "--time-scale",
        str(CLI_SCALE),
        "--plain",
    ]


async def _run_cli(server: FakeServer, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "VENICE_API_KEY": API_KEY}
    return await anyio.run_process(_cli(server, *args), env=env, check=False)


def _line(i: int) -> dict[str, Any]:
    return {
        "model": "stable-audio-25",
        "prompt": f"ambient texture number {i:02d}",
        "duration_seconds": 10,
    }


def _request(i: int = 0) -> v.QueueRequest:
    return v.QueueRequest(**_line(i))


async def _batch_journal(out: Path, lines: int) -> Path:
    """A batch folder whose journal has ``lines`` lines recorded and none sent."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".venice-journal.sqlite3"
    async with await Journal.open(path) as journal:
        for i in range(1, lines + 1):
            await journal.add_intent(
                _request(i), key=f"line-{i}", destination=str(out), name=f"{i:04d}-track"
            )
    return path


def _manifest_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable, even for root (which ignores permission bits)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is unavailable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# --------------------------------------------------------------------------- one owner


@contextmanager
def _holder(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the journal at ``path`` until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


async def test_a_second_process_is_refused_with_the_holders_pid(
    server: FakeServer, tmp_path: Path
) -> None:
    """A session on a journal another process holds fails at open, naming its pid; nothing sent."""
    path = tmp_path / "jobs.sqlite3"
    with _holder(path) as holder:
        with pytest.raises(v.JournalError, match=f"in use by process {holder.pid}") as caught:
            async with _session(server, journal=path) as session:
                await session.submit("stable-audio-25", "would be paid twice otherwise")
        assert caught.value.holder_pid == holder.pid
        assert server.requests == []
        holder.kill()  # kill -9: the operating system drops its lock
        holder.wait()
        async with _session(server, journal=path) as session:
            await session.submit("stable-audio-25", "the journal is free again")
    assert server.count("queue") == 1


async def test_cli_resume_is_refused_while_another_process_holds_the_journal(
    cli_server: FakeServer, tmp_path: Path
) -> None:
    """`resume`/`batch` on a folder another process works on exit 4 (invalid input: a busy
    journal) with its pid; none sent."""
    out = tmp_path / "out"
    path = await _batch_journal(out, 3)
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(_line(i)) + "\n" for i in (1, 2, 3)))
    with _holder(path) as holder:
        results = [
            await _run_cli(cli_server, "resume", str(out)),
            await _run_cli(cli_server, "batch", str(batch), "--out", str(out)),
        ]
    for result in results:
        err = result.stderr.decode()
        assert result.returncode == 4, err
        assert f"in use by process {holder.pid}" in err
        assert "Traceback" not in err
    assert cli_server.count("queue") == 0


async def test_two_resumes_at_once_pay_each_line_once(
    cli_server: FakeServer, tmp_path: Path
) -> None:
    """Two `resume` runs started together on one folder queue each line exactly once."""
    out = tmp_path / "out"
    await _batch_journal(out, 30)  # longer than a burst of the rate limit: they overlap
    env = {**os.environ, "VENICE_API_KEY": API_KEY}
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def resume() -> None:
        results.append(
            await anyio.run_process(_cli(cli_server, "resume", str(out)), env=env, check=False)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(resume)
        tg.start_soon(resume)
    assert cli_server.count("queue") == 30
    for result in results:
        err = result.stderr.decode()
        assert result.returncode == 0 or (result.returncode == 4 and "in use by" in err), err
    assert [row["state"] for row in _manifest_rows(out)] == ["succeeded"] * 30


async def test_a_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    """Two Journal.open of one file in one process: the second is refused until the first closes."""
    path = tmp_path / "jobs.sqlite3"
    first = await Journal.open(path)
    with pytest.raises(v.JournalError, match="already open in this process") as caught:
        await Journal.open(tmp_path / "." / "jobs.sqlite3")
    assert caught.value.holder_pid == os.getpid()
    with pytest.raises(v.JournalError, match="already open"):
        async with _session("http://127.0.0.1:9", journal=path):
            pass
    await first.aclose()
    async with await Journal.open(path) as again:
        assert await again.entries() == []


async def test_a_row_is_claimed_once(tmp_path: Path) -> None:
    """Marking a job "sending" claims it: a second claim (another owner) is refused."""
    async with await Journal.open(tmp_path / "jobs.sqlite3") as journal:
        row = await journal.add_intent(_request())
        await journal.mark_sending(row)
        with pytest.raises(v.JournalError, match="no longer waiting to be sent"):
            await journal.mark_sending(row)
        entry = await journal.get(row)
    assert entry is not None
    assert entry.state is JobState.SENDING


# --------------------------------------------------------------------------- failed writes


@contextmanager
def _locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another program holding the database's write lock (until ``ROLLBACK``)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def test_a_locked_journal_after_queue_keeps_the_job_and_records_it_later(
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The queue_id write fails (locked): submit returns the job, warns, records it later."""
    server.plan(JobScript(duration=5.0))
    path = tmp_path / "jobs.sqlite3"
    journal = await Journal.open(path, busy_timeout=0.05)
    with _locked(path) as other:
        claim = journal.mark_sending

        async def claim_then_lock(row: int) -> None:
            await claim(row)
            other.execute("BEGIN EXCLUSIVE")  # taken between "sending" and the queue answer

        monkeypatch.setattr(journal, "mark_sending", claim_then_lock)
        async with _session(server, journal=journal, output_dir=tmp_path) as session:
            with caplog.at_level(logging.WARNING, logger="venice_audio_async"):
                job = await session.submit("stable-audio-25", "recorded once the lock is gone")
            assert job.queue_id in server.queue_ids()
            assert [j.queue_id for j in session.unfinished()] == [job.queue_id]
            warned = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert any(job.queue_id in r.getMessage() for r in warned)
            stats = session.statistics()
            assert stats.journal_write_failures >= 1
            assert stats.journal_writes_pending >= 1
            (raw,) = other.execute("SELECT state, queue_id FROM jobs").fetchall()
            assert raw == ("sending", None)

            other.execute("ROLLBACK")
            with anyio.fail_after(10):
                while journal.pending_writes:
                    await anyio.sleep(0.01)  # the session's retry task lands it
            (entry,) = await journal.entries()
            assert entry.queue_id == job.queue_id
            assert entry.state in (JobState.QUEUED, JobState.SUCCEEDED)
            assert entry.delayed_writes >= 1
            await session.wait_for(job)
    (entry,) = await journal.entries()
    await journal.aclose()
    assert entry.state is JobState.SUCCEEDED
    assert server.count("queue") == 1


async def test_ids_still_unwritten_at_close_are_logged(
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A journal locked until the end: closing tries once more, then logs the queue_id."""
    path = tmp_path / "jobs.sqlite3"
    journal = await Journal.open(path, busy_timeout=0.02)
    with _locked(path) as other:
        claim = journal.mark_sending

        async def claim_then_lock(row: int) -> None:
            await claim(row)
            other.execute("BEGIN EXCLUSIVE")

        monkeypatch.setattr(journal, "mark_sending", claim_then_lock)
        with caplog.at_level(logging.WARNING, logger="venice_audio_async"):
            async with _session(server, journal=journal) as session:
                job = await session.submit("stable-audio-25", "never recorded in the journal")
            await journal.aclose()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(job.queue_id in message for message in errors)


async def test_a_locked_journal_before_sending_raises_and_sends_nothing(
    server: FakeServer, tmp_path: Path
) -> None:
    """When the intent cannot be written, submit raises JournalError and queues nothing."""
    path = tmp_path / "jobs.sqlite3"
    journal = await Journal.open(path, busy_timeout=0.02)
    async with _session(server, journal=journal, max_spend_usd=5.0) as session:
        with _locked(path) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(v.JournalError, match="locked"):
                await session.submit("stable-audio-25", "not recorded, so not sent")
            with pytest.raises(v.BatchSubmitError) as caught:
                await session.submit_many([_request(1), _request(2)])
        assert session.spending() == (0.0, 5.0)
    await journal.aclose()
    assert all(isinstance(e, v.JournalError) for e in caught.value.errors.values())
    assert server.count("queue") == 0


# --------------------------------------------------------------------------- repeated ids


async def _repeating_server() -> TestServer:
    """A server whose queue always answers the same queue_id (and whose jobs never end)."""

    async def queue(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {"model": body["model"], "queue_id": "the-same-id", "status": "QUEUED"}
        )

    async def retrieve(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "PROCESSING", "average_execution_time": 600_000, "execution_duration": 1}
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": load_default_catalogue()})

    app = web.Application()
    app.router.add_get("/api/v1/models", models)
    app.router.add_post("/api/v1/audio/queue", queue)
    app.router.add_post("/api/v1/audio/retrieve", retrieve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize("journaled", [True, False])
async def test_a_repeated_queue_id_is_an_unknown_outcome_not_a_crash(
    tmp_path: Path, journaled: bool
) -> None:
    """A server repeating a queue_id: the second submit is QueueOutcomeUnknown, both rows kept."""
    repeating = await _repeating_server()
    url = str(repeating.make_url("/api/v1"))
    path = tmp_path / "jobs.sqlite3"
    journal = path if journaled else None
    try:
        async with _session(url, journal=journal, validate=False) as session:
            first = await session.submit("stable-audio-25", "the first of two jobs")
            with pytest.raises(v.QueueOutcomeUnknown) as caught:
                await session.submit("stable-audio-25", "the second of two jobs")
            assert "the-same-id" in str(caught.value.cause)
            assert isinstance(caught.value.cause, v.MalformedResponse)

            with pytest.raises(v.BatchSubmitError) as batch:
                await session.submit_many([_request(1), _request(2)], validate=False)
            assert batch.value.jobs == [None, None]
            assert all(isinstance(e, v.QueueOutcomeUnknown) for e in batch.value.errors.values())
            assert [j.queue_id for j in session.unfinished()] == [first.queue_id]
    finally:
        await repeating.close()
    if journaled:
        # A later session, where the first job is not tracked: the journal knows the id.
        repeating = await _repeating_server()
        try:
            async with _session(str(repeating.make_url("/api/v1")), journal=path) as session:
                with pytest.raises(v.QueueOutcomeUnknown, match="may have been created"):
                    await session.submit("stable-audio-25", "a third job", validate=False)
        finally:
            await repeating.close()
        async with await Journal.open(path) as reread:
            entries = await reread.entries()
        assert [(e.state, e.queue_id) for e in entries] == [
            (JobState.QUEUED, "the-same-id"),
            (JobState.UNKNOWN, None),
            (JobState.UNKNOWN, None),
            (JobState.UNKNOWN, None),
            (JobState.UNKNOWN, None),
        ]
        assert all("the-same-id" in (e.error or "") for e in entries[1:])


async def test_a_repeated_queue_id_written_by_a_racing_owner_keeps_both_rows(
    tmp_path: Path,
) -> None:
    """mark_queued with an id another row holds marks this row unknown instead of raising."""
    async with await Journal.open(tmp_path / "jobs.sqlite3") as journal:
        first = await journal.add_intent(_request(1))
        second = await journal.add_intent(_request(2))
        for row in (first, second):
            await journal.mark_sending(row)
            await journal.mark_queued(row, "q-1")
        entries = await journal.entries()
    assert [(e.state, e.queue_id) for e in entries] == [
        (JobState.QUEUED, "q-1"),
        (JobState.UNKNOWN, None),
    ]
    assert "q-1" in (entries[1].error or "")
    assert await_spend_counts_both(entries)


def await_spend_counts_both(entries: list[JournalEntry]) -> bool:
    """Both rows count as maybe billed."""
    return all(e.state.maybe_billed for e in entries)


# --------------------------------------------------------------------------- damaged files


async def test_an_empty_journal_file_is_refused_at_open(server: FakeServer, tmp_path: Path) -> None:
    """A used journal truncated to 0 bytes is refused by open, session and resume(path)."""
    path = tmp_path / "jobs.sqlite3"
    async with await Journal.open(path) as journal:
        await journal.add_intent(_request())
    for leftover in tmp_path.glob("jobs.sqlite3-*"):
        leftover.unlink()
    path.write_bytes(b"")
    with pytest.raises(v.JournalError, match="empty"):
        await Journal.open(path)
    with pytest.raises(v.JournalError, match="empty"):
        async with _session(server, journal=path):
            pass
    async with _session(server) as session:
        with pytest.raises(v.JournalError, match="empty"):
            await session.resume(path)
        with pytest.raises(v.JournalError, match="no journal"):
            await session.resume(tmp_path / "missing.sqlite3")
    assert server.count("queue") == 0
    assert path.stat().st_size == 0


async def test_a_new_empty_file_may_become_a_journal(tmp_path: Path) -> None:
    """A 0-byte file never used as a journal (touch, mkstemp) becomes one; resume refuses it."""
    path = tmp_path / "fresh.sqlite3"
    path.touch()
    with pytest.raises(v.JournalError, match="empty"):
        await Journal.open(path, create=False)
    async with await Journal.open(path) as journal:
        await journal.add_intent(_request())
    async with await Journal.open(path, create=False) as journal:
        assert len(await journal.entries()) == 1


async def test_cli_resume_of_an_empty_journal_fails_and_keeps_the_manifest(
    cli_server: FakeServer, tmp_path: Path
) -> None:
    """`resume` on a truncated journal exits 4 (invalid input) and leaves the 3-row manifest
    as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".venice-journal.sqlite3").write_bytes(b"")
    manifest = "".join(json.dumps({"line": i, "queue_id": f"q-{i}"}) + "\n" for i in (1, 2, 3))
    (out / "manifest.jsonl").write_text(manifest)
    result = await _run_cli(cli_server, "resume", str(out))
    err = result.stderr.decode()
    assert result.returncode == 4, err
    assert "empty" in err
    assert "Traceback" not in err
    assert (out / "manifest.jsonl").read_text() == manifest
    assert cli_server.requests == []


async def test_a_corrupt_or_foreign_file_is_refused_at_open(tmp_path: Path) -> None:
    """A damaged header or a database without a jobs table is a JournalError, not sqlite3's."""
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database at all " * 200)
    with pytest.raises(v.JournalError, match="damaged"):
        await Journal.open(corrupt)
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(v.JournalError, match="not a venice-audio journal"):
        await Journal.open(foreign)
    # Refused opens leave the lock free.
    corrupt.unlink()
    async with await Journal.open(corrupt) as fresh:
        assert await fresh.entries() == []


async def test_a_read_only_journal_is_refused_at_open(server: FakeServer, tmp_path: Path) -> None:
    """A read-only journal file is refused when the session opens, before anything is sent."""
    path = await _batch_journal(tmp_path / "out", 2)
    with _read_only(path), pytest.raises(v.JournalError, match="read-only"):
        async with _session(server, journal=path) as session:
            await session.resume()
    assert server.requests == []


async def test_a_journal_in_a_read_only_folder_is_refused_at_open(
    server: FakeServer, tmp_path: Path
) -> None:
    """A journal whose folder cannot be written is refused at open, with what to do."""
    folder = tmp_path / "locked-folder"
    folder.mkdir()
    with _read_only(folder), pytest.raises(v.JournalError, match="writable"):
        async with _session(server, journal=folder / "jobs.sqlite3") as session:
            await session.submit("stable-audio-25", "nowhere to record this")
    assert server.requests == []


async def test_resume_never_shrinks_the_manifest(cli_server: FakeServer, tmp_path: Path) -> None:
    """A journal with fewer jobs than the manifest (it was replaced) leaves the manifest alone."""
    out = tmp_path / "out"
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(_line(i)) + "\n" for i in (1, 2, 3)))
    assert (await _run_cli(cli_server, "batch", str(batch), "--out", str(out))).returncode == 0
    before = (out / "manifest.jsonl").read_text()
    assert len(before.splitlines()) == 3
    journal = out / ".venice-journal.sqlite3"
    for leftover in out.glob(".venice-journal.sqlite3*"):
        leftover.unlink()
    await _batch_journal(out, 1)

    result = await _run_cli(cli_server, "resume", str(out))
    err = result.stderr.decode()
    assert result.returncode == 4, err
    assert "refusing to replace" in err
    assert (out / "manifest.jsonl").read_text() == before
    assert journal.exists()
    assert cli_server.count("queue") == 3  # the batch's; resume sent nothing


async def test_batch_without_its_journal_does_not_start_over(
    cli_server: FakeServer, tmp_path: Path
) -> None:
    """A folder with a manifest but no journal is refused: its jobs would be paid again."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text(json.dumps({"line": 1, "queue_id": "q-1"}) + "\n")
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps(_line(1)) + "\n")
    result = await _run_cli(cli_server, "batch", str(batch), "--out", str(out))
    assert result.returncode == 4, result.stderr.decode()
    assert "no journal" in result.stderr.decode()
    assert cli_server.count("queue") == 0


async def test_a_batch_over_the_cap_is_refused_whole_and_journals_nothing(
    cli_server: FakeServer, tmp_path: Path
) -> None:
    """`batch` over --max-spend exits 3 before sending; no line is journaled, so no resume
    sends one behind the user's back; with a higher cap the same batch runs once."""
    out = tmp_path / "out"
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(_line(i)) + "\n" for i in (1, 2, 3)))
    result = await _run_cli(
        cli_server, "batch", str(batch), "--out", str(out), "--max-spend", "0.3"
    )
    assert result.returncode == 3, result.stderr.decode()
    async with await Journal.open(out / ".venice-journal.sqlite3") as journal:
        assert await journal.entries() == []
    result = await _run_cli(cli_server, "batch", str(batch), "--out", str(out), "--max-spend", "5")
    assert result.returncode == 0, result.stderr.decode()
    assert cli_server.count("queue") == 3


# --------------------------------------------------------------------------- leftovers


async def test_resume_removes_partial_downloads_of_a_killed_run(
    server: FakeServer, tmp_path: Path
) -> None:
    """resume deletes `.NAME.<hex>.part` leftovers in its output folder, and nothing else."""
    out = tmp_path / "out"
    await _batch_journal(out, 1)
    leftovers = [out / ".0001-track.wav.1a2b3c4d.part", out / ".0002-other.mp3.deadbeef.part"]
    kept = [out / "notes.part", out / ".plan.txt.1a2b3c4d.part", out / "0003-done.wav"]
    for path in leftovers + kept:
        path.write_bytes(b"x" * 100)
    server.plan(JobScript(duration=1.0))
    async with _session(server, journal=out / ".venice-journal.sqlite3") as session:
        report = await session.resume()
        await session.wait_for(report.jobs[0])
    assert report.partial_files_removed == 2
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)


async def test_a_download_in_progress_is_not_taken_for_a_leftover(tmp_path: Path) -> None:
    """A FileSink writing now keeps its temporary file while leftovers are cleaned."""
    from venice_audio_async._core.audio import remove_partial_downloads

    sink = FileSink(tmp_path, stem="in-progress", directory=True)
    await sink.begin(audio_format="wav", content_type="audio/wav", content_length=None)
    await sink.write(b"RIFF")
    (partial,) = tmp_path.glob(".in-progress.wav.*.part")
    assert remove_partial_downloads(tmp_path) == []
    assert partial.exists()
    await sink.abort()
    assert not partial.exists()
