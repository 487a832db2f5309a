"""A used journal is never taken as new, and one that lost rows is refused before any send.

Each claim and each ``queue_id`` reaches the database file itself (a WAL checkpoint), so a
journal whose ``-wal`` file was lost after a crash (``kill -9``, a copy that skipped it)
keeps them; the high-water mark beside it (``<journal>.mark``) says how far it got, so a
journal that lost rows anyway (an older copy put back, its tables gone) is refused by
``batch``, ``resume``, ``resume(path)`` and ``AsyncSession(journal=...)`` alike.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import venice_audio_async as v
from venice_audio_async._cli import main
from venice_audio_async._cli.folder import FAKE_STATE_NAME, JOURNAL_NAME, MANIFEST_NAME
from venice_audio_async._ledger.journal_mark import mark_path_for
from venice_audio_async.journal import JobState, Journal, JournalEntry
from venice_audio_async.testing import FakeServer, JobScript

from ..conftest import API_KEY, TIME_SCALE, make_session

REQUEST = v.QueueRequest("stable-audio-25", "soft rain on a tin roof", duration_seconds=5)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A fake server whose jobs never end while a test looks (they stay queued)."""
    async with FakeServer(
        time_scale=TIME_SCALE, api_keys=[API_KEY], job_script=JobScript(duration=10_000.0)
    ) as fake:
        yield fake


def _side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]


def _copy_without_wal(path: Path, to: Path) -> None:
    """Copy the journal's database file alone, as a copy that skipped its -wal file."""
    shutil.copyfile(path, to)


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master")}


async def _entries(path: Path) -> list[JournalEntry]:
    async with await Journal.open(path, create=False) as journal:
        return await journal.entries()


async def _submit(server: FakeServer, path: Path, count: int) -> list[v.Job]:
    async with make_session(server, journal=path) as session:
        return [
            await session.submit(REQUEST.model, f"{REQUEST.prompt} {i}", duration_seconds=5)
            for i in range(count)
        ]


# --------------------------------------------------------------------------- lost -wal


@pytest.mark.anyio
async def test_a_lost_wal_loses_no_claim_and_no_queue_id(
    server: FakeServer, tmp_path: Path
) -> None:
    """The database file alone, copied while the session runs (its -wal left behind), holds
    every job queued so far with its queue_id: nothing paid is forgotten."""
    path = tmp_path / "jobs.sqlite3"
    copy = tmp_path / "copy.sqlite3"
    async with make_session(server, journal=path) as session:
        jobs = [await session.submit(REQUEST.model, REQUEST.prompt) for _ in range(2)]
        assert path.with_name(path.name + "-wal").exists()  # the session holds it open
        _copy_without_wal(path, copy)
    entries = await _entries(copy)
    assert [(e.state, e.queue_id) for e in entries] == [
        (JobState.QUEUED, job.queue_id) for job in jobs
    ]


KILLED = """
import os, signal, sys, anyio, venice_audio_async as v
from venice_audio_async.journal import Journal
async def main():
    journal = await Journal.open(sys.argv[1])
    request = v.QueueRequest("stable-audio-25", "soft rain on a tin roof")
    first = await journal.add_intent(request, key="line-1")
    await journal.mark_sending(first)
    await journal.mark_queued(first, "q-paid")
    second = await journal.add_intent(request, key="line-2")
    await journal.mark_sending(second)  # killed after sending, before the answer came
    os.kill(os.getpid(), signal.SIGKILL)
anyio.run(main)
"""


@pytest.mark.anyio
async def test_kill_9_then_a_lost_wal_keeps_every_claim(tmp_path: Path) -> None:
    """A process killed mid-batch whose -wal file is then lost: the journal still holds the
    paid queue_id and the job in flight ("sending": resume reports it, never re-sends it)."""
    path = tmp_path / "jobs.sqlite3"
    killed = await anyio.run_process([sys.executable, "-c", KILLED, str(path)], check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    for side in _side_files(path):
        side.unlink(missing_ok=True)
    entries = await _entries(path)
    assert [(e.key, e.state, e.queue_id) for e in entries] == [
        ("line-1", JobState.QUEUED, "q-paid"),
        ("line-2", JobState.SENDING, None),
    ]


# --------------------------------------------------------------------------- lost rows


async def _journal_put_back_older(server: FakeServer, path: Path) -> None:
    """A journal with 3 queued jobs, replaced by its copy taken after the first."""
    await _submit(server, path, 1)
    older = path.with_name("older.sqlite3")
    shutil.copyfile(path, older)  # closed: everything is in the database file
    await _submit(server, path, 2)
    assert server.count("queue") == 3
    for side in _side_files(path):
        side.unlink(missing_ok=True)
    older.replace(path)


@pytest.mark.anyio
async def test_a_journal_that_lost_rows_is_refused_everywhere(
    server: FakeServer, tmp_path: Path
) -> None:
    """A journal holding fewer jobs than its mark says is refused by Journal.open, a session
    opened on it and resume(path), before anything is sent, saying what to restore."""
    path = tmp_path / "jobs.sqlite3"
    await _journal_put_back_older(server, path)
    assert json.loads(mark_path_for(path).read_text()) == {"rows": 3, "last_claimed": 3}

    with pytest.raises(v.JournalError) as caught:
        await Journal.open(path)
    message = str(caught.value)
    assert "lost jobs it had recorded: it holds 1 job(s)" in message
    assert "says it held 3 job(s) and job 3 was sent" in message
    assert "Restore the journal's latest copy together with its -wal file" in message
    assert "(jobs.sqlite3-wal)" in message
    assert "jobs.sqlite3.mark away" in message
    assert caught.value.path == str(path)

    with pytest.raises(v.JournalError, match="lost jobs"):
        async with make_session(server, journal=path):
            pass
    async with make_session(server) as session:
        with pytest.raises(v.JournalError, match="lost jobs"):
            await session.resume(path)
    assert server.count("queue") == 3  # nothing more was sent

    # Moving the journal and its mark away starts a new one, as the message says.
    path.rename(tmp_path / "kept.sqlite3")
    mark_path_for(path).rename(tmp_path / "kept.sqlite3.mark")
    async with await Journal.open(path) as fresh:
        assert await fresh.entries() == []


@pytest.mark.anyio
async def test_a_claim_given_back_is_not_a_lost_row(tmp_path: Path) -> None:
    """A job claimed, then given back (its queue created no job: a 429, a 503), is "intent"
    again: the journal is whole and opens."""
    path = tmp_path / "jobs.sqlite3"
    async with await Journal.open(path) as journal:
        row = await journal.add_intent(REQUEST, key="line-1")
        await journal.mark_sending(row)
        assert await journal.unclaim(row)
    assert [e.state for e in await _entries(path)] == [JobState.INTENT]


@pytest.mark.anyio
async def test_a_journal_without_its_last_claimed_job_is_refused(tmp_path: Path) -> None:
    """As many rows as the mark says, but not the last one claimed: refused."""
    path = tmp_path / "jobs.sqlite3"
    async with await Journal.open(path) as journal:
        await journal.mark_sending(await journal.add_intent(REQUEST, key="line-1"))
    mark_path_for(path).write_text(json.dumps({"rows": 1, "last_claimed": 2}))
    with pytest.raises(v.JournalError, match="it has no job 2"):
        await Journal.open(path)


@pytest.mark.anyio
@pytest.mark.parametrize("with_mark", [True, False], ids=["mark", "lock-file-only"])
async def test_a_used_journal_without_tables_is_not_taken_as_new(
    tmp_path: Path, with_mark: bool
) -> None:
    """A journal file that lost its tables (its -wal lost before this version checkpointed)
    is refused, not made into a new journal: its lines would be queued again. The lock file
    alone (a journal of an earlier version, without a mark) shows it was used."""
    path = tmp_path / "jobs.sqlite3"
    async with await Journal.open(path) as journal:
        await journal.mark_sending(await journal.add_intent(REQUEST))
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 1")  # a database file with no tables
    if not with_mark:
        mark_path_for(path).unlink()
    for create in (True, False):
        with pytest.raises(v.JournalError, match="it has no jobs table") as caught:
            await Journal.open(path, create=create)
        assert "lost jobs it had recorded" in str(caught.value)
    assert _tables(path) == set()  # left as it was


@pytest.mark.anyio
async def test_a_missing_journal_with_a_mark_is_not_started_again(tmp_path: Path) -> None:
    """A journal file gone while its mark says jobs were sent is refused, not recreated."""
    path = tmp_path / "jobs.sqlite3"
    async with await Journal.open(path) as journal:
        await journal.mark_sending(await journal.add_intent(REQUEST))
    path.unlink()
    with pytest.raises(v.JournalError, match="the file is missing"):
        await Journal.open(path)
    assert not path.exists()


@pytest.mark.anyio
async def test_a_damaged_mark_is_refused_with_advice(tmp_path: Path) -> None:
    """A mark that is not one is refused (nothing sent), saying how to go on."""
    path = tmp_path / "jobs.sqlite3"
    async with await Journal.open(path):
        pass
    mark_path_for(path).write_text("{not json")
    with pytest.raises(v.JournalError, match=r"mark .* is damaged"):
        await Journal.open(path)


@pytest.mark.anyio
async def test_a_claim_is_not_sent_unless_its_mark_is_written(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the mark cannot be written at a claim, the request is not sent and the job is
    left to be sent (not "unknown"): the journal would otherwise run ahead of its mark."""
    import venice_audio_async._ledger.journal_db as journal_db

    path = tmp_path / "jobs.sqlite3"
    async with make_session(server, journal=path) as session:

        def full(*_: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(journal_db, "write_mark", full)
        with pytest.raises(v.JournalError, match="could not make the claim of job 1 durable"):
            await session.submit(REQUEST.model, REQUEST.prompt)
        monkeypatch.undo()
    assert server.count("queue") == 0
    assert [e.state for e in await _entries(path)] == [JobState.INTENT]


# --------------------------------------------------------------------------- the CLI


def _tracks(path: Path, count: int) -> Path:
    rows = [
        {"model": "stable-audio-25", "prompt": f"soft rain number {i:02d}", "duration_seconds": 5}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _fake_queued(out: Path) -> int:
    lines = (out / FAKE_STATE_NAME).read_text().splitlines()
    return sum(1 for line in lines if '"queued"' in line)


def test_batch_refuses_a_folder_whose_journal_lost_its_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """batch again on a folder whose journal lost its tables (and whose manifest was never
    written: killed mid-run) is refused, exit 4 (invalid input): it would queue every line
    a second time."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 2)
    assert main(["batch", str(batch), "--out", str(out), "--fake", "--plain"]) == 0
    queued = _fake_queued(out)
    journal = out / JOURNAL_NAME
    journal.unlink()
    (out / MANIFEST_NAME).unlink()
    with sqlite3.connect(journal) as db:
        db.execute("PRAGMA user_version = 1")
    capsys.readouterr()
    for command in (["batch", str(batch), "--out", str(out)], ["resume", str(out)]):
        assert main([*command, "--fake", "--plain"]) == 4
        err = capsys.readouterr().err
        assert "lost jobs it had recorded: it has no jobs table" in err
        assert "Traceback" not in err
    assert _fake_queued(out) == queued


def test_the_mark_file_is_small_and_beside_the_journal(tmp_path: Path) -> None:
    """The mark is one JSON line next to the journal (documented in docs/journal.md)."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 1)
    assert main(["batch", str(batch), "--out", str(out), "--fake", "--plain"]) == 0
    mark = out / f"{JOURNAL_NAME}.mark"
    assert json.loads(mark.read_text()) == {"rows": 1, "last_claimed": 1}
    assert not list(out.glob("*.part"))
    assert os.path.getsize(mark) < 100
