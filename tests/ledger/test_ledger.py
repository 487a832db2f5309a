"""The ledger: money held and settled per job, journal records, and whose journal it closes."""

from __future__ import annotations

from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async._ledger.ledger import Intent, Ledger
from venice_audio_async.journal import JobState, Journal
from venice_audio_async.testing import FakeServer, ManualClock

from ..conftest import make_session

pytestmark = pytest.mark.anyio

REQUEST = v.QueueRequest(model="stable-audio-25", prompt="a ledger's test piece")


async def _journal_with_spend(path: Path, *amounts: float) -> None:
    """A journal recording paid jobs of these estimated prices (then closed)."""
    async with await Journal.open(path) as journal:
        for i, amount in enumerate(amounts):
            row = await journal.add_intent(REQUEST, estimate_usd=amount)
            await journal.mark_sending(row)
            await journal.mark_queued(row, f"paid-{i}")


def _intent(estimate: float | None, **fields: str) -> Intent:
    return Intent(request=REQUEST, estimate_usd=estimate, **fields)


# --------------------------------------------------------------------------- the bug


async def test_resume_of_a_callers_journal_leaves_it_open(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """resume(journal) on a session without one never closes the caller's journal."""
    path = tmp_path / "jobs.sqlite3"
    await _journal_with_spend(path, 0.87)
    journal = await Journal.open(path)
    async with make_session(fake_server) as session:
        await session.resume(journal)
        assert session.journal is journal
    assert len(await journal.entries()) == 1  # still open: the caller closes it
    await journal.aclose()


async def test_resume_counts_the_spend_already_recorded(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """The cap starts from the journal's $0.87, not from $0.00."""
    path = tmp_path / "jobs.sqlite3"
    await _journal_with_spend(path, 0.5, 0.37)
    async with (
        await Journal.open(path) as journal,
        make_session(fake_server, max_spend_usd=1.0) as session,
    ):
        await session.resume(journal)
        assert session.spending()[0] == pytest.approx(0.87)
        with pytest.raises(v.SpendLimitExceeded):
            await session.submit("stable-audio-25", "one more at $0.24 is too many")
    assert fake_server.count("queue") == 0


async def test_adopting_a_journal_keeps_what_the_session_spent_before(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Spend of this session before resume(path) adds to the journal's; it is not replaced."""
    path = tmp_path / "jobs.sqlite3"
    await _journal_with_spend(path, 0.72)
    async with make_session(fake_server, max_spend_usd=1.0) as session:
        await session.submit("stable-audio-25", "bought before the journal")  # $0.24
        await session.resume(path)
        assert session.spending()[0] == pytest.approx(0.96)
        with pytest.raises(v.SpendLimitExceeded):
            await session.submit("stable-audio-25", "this one would reach $1.20")
    assert fake_server.count("queue") == 1


async def test_a_journal_opened_by_resume_is_closed_with_the_session(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """resume(path) opens the journal, so the session's close releases it."""
    path = tmp_path / "jobs.sqlite3"
    await _journal_with_spend(path, 0.1)
    async with make_session(fake_server) as session:
        await session.resume(path)
        with pytest.raises(v.JournalError):
            await Journal.open(path)  # owned by the session meanwhile
    async with await Journal.open(path) as journal:  # free again
        assert len(await journal.entries()) == 1


# --------------------------------------------------------------------------- the ledger alone


async def test_a_ledger_closes_only_the_journal_it_opened(tmp_path: Path) -> None:
    """A Journal object stays open after the ledger closes; a path is closed with it."""
    clock = ManualClock()
    given = await Journal.open(tmp_path / "given.sqlite3")
    borrowed = Ledger(limit_usd=None, clock=clock, journal=given)
    await borrowed.open()
    await borrowed.aclose()
    assert await given.entries() == []
    await given.aclose()

    owned = Ledger(limit_usd=None, clock=clock, journal=tmp_path / "owned.sqlite3")
    await owned.open()
    assert owned.journal is not None
    await owned.aclose()
    with pytest.raises(v.JournalError, match="closed"):
        await owned.journal.entries()


async def test_money_is_held_while_queueing_and_settled_by_the_answer(tmp_path: Path) -> None:
    """Held amounts count against the limit; queued spends, rejected gives back."""
    ledger = Ledger(limit_usd=1.0, clock=ManualClock())
    first = await ledger.intend(_intent(0.4))
    second = await ledger.intend(_intent(0.4))
    with pytest.raises(v.SpendLimitExceeded, match="being queued"):
        await ledger.intend(_intent(0.4))  # 0.8 held: a third would pass the limit
    await ledger.claim(first)
    await ledger.queued(first, "q-1")
    await ledger.claim(second)
    await ledger.failed(second, v.BadRequestError("no", status_code=400))
    assert ledger.spending()[0] == pytest.approx(0.4)
    third = await ledger.intend(_intent(0.6))  # 0.4 spent + 0.6: exactly the limit
    await ledger.failed(third, v.ConnectError("never left"))  # not claimed: given back
    assert ledger.spending()[0] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("claimed", "error", "state", "spent"),
    [
        (True, v.BadRequestError("refused", status_code=400), JobState.REJECTED, 0.0),
        (True, v.ConnectionDropped("lost"), JobState.UNKNOWN, 0.3),
        (
            True,
            v.QueueOutcomeUnknown(REQUEST, v.ConnectionDropped("lost")),
            JobState.UNKNOWN,
            0.3,
        ),
        (False, v.JournalError("could not claim"), JobState.INTENT, 0.0),
    ],
    ids=["rejected", "lost-after-claim", "outcome-unknown", "never-claimed"],
)
async def test_a_failed_queue_is_recorded_by_what_it_may_have_cost(
    tmp_path: Path, claimed: bool, error: BaseException, state: JobState, spent: float
) -> None:
    """unknown counts as spent; rejected and never-sent give the money back."""
    ledger = Ledger(limit_usd=None, clock=ManualClock(), journal=tmp_path / "j.sqlite3")
    await ledger.open()
    hold = await ledger.intend(_intent(0.3, key="line-1"))
    if claimed:
        await ledger.claim(hold)
    await ledger.failed(hold, error)
    entry = await ledger.by_key("line-1")
    await ledger.aclose()
    assert entry is not None
    assert entry.state is state
    assert ledger.spending()[0] == pytest.approx(spent)


async def test_a_whole_batch_over_the_limit_records_nothing(tmp_path: Path) -> None:
    """intend_all(all_or_nothing=True) refuses the batch before writing a row."""
    ledger = Ledger(limit_usd=1.0, clock=ManualClock(), journal=tmp_path / "j.sqlite3")
    await ledger.open()
    batch = [_intent(0.3, key=f"line-{i}") for i in range(4)]
    with pytest.raises(v.SpendLimitExceeded, match="nothing was spent") as caught:
        await ledger.intend_all(batch, all_or_nothing=True)
    assert caught.value.estimate_usd == pytest.approx(1.2)
    assert await ledger.entries() == []
    assert await ledger.intend_all(batch, all_or_nothing=False) == pytest.approx(1.2)
    assert [e.key for e in await ledger.entries()] == [f"line-{i}" for i in range(4)]
    assert (await ledger.by_key("line-2")) is not None
    assert (await ledger.by_key("line-9")) is None
    await ledger.aclose()


async def test_outcomes_and_releases_are_recorded(tmp_path: Path) -> None:
    """A stored job is "succeeded" and then released; a deadline is not the job's failure."""
    ledger = Ledger(limit_usd=None, clock=ManualClock(), journal=tmp_path / "j.sqlite3")
    await ledger.open()
    for key, queue_id in (("done", "q-done"), ("late", "q-late")):
        hold = await ledger.intend(_intent(0.1, key=key))
        await ledger.claim(hold)
        await ledger.queued(hold, queue_id)
    done = v.Job(model=REQUEST.model, queue_id="q-done")
    audio = v.AudioResult(content_type="audio/mpeg", format="mp3", size=3, data=b"abc")
    await ledger.record_outcome(v.Succeeded(done, audio))
    await ledger.record_released(done)
    late = v.Job(model=REQUEST.model, queue_id="q-late")
    await ledger.record_outcome(v.Failed(late, v.JobDeadlineExceeded(late, 5.0)))
    entries = {e.key: e for e in await ledger.entries()}
    await ledger.aclose()
    assert (entries["done"].state, entries["done"].released) == (JobState.SUCCEEDED, True)
    assert entries["late"].state is JobState.QUEUED  # still running: resume attaches it


async def test_a_failed_job_counts_as_spent(tmp_path: Path) -> None:
    """Every job that was queued may be billed, failed ones too (unless refunded); rejected
    ones are not."""
    path = tmp_path / "jobs.sqlite3"
    async with await Journal.open(path) as journal:
        for i, end in enumerate(("failed", "rejected", "queued")):
            row = await journal.add_intent(REQUEST, estimate_usd=0.25)
            await journal.mark_sending(row)
            if end == "rejected":
                await journal.mark_rejected(row, v.BadRequestError("no", status_code=400))
                continue
            await journal.mark_queued(row, f"q-{i}")
            if end == "failed":
                await journal.mark_failed(f"q-{i}", v.AudioStorageError("disk full"))
        await journal.add_intent(REQUEST, estimate_usd=0.25)  # never sent
        states = [e.state for e in await journal.entries()]
        assert [s.maybe_billed for s in states] == [True, False, True, False]
        assert await journal.estimated_spend_usd() == pytest.approx(0.5)


async def test_journal_requests_then_resume_queues_them(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A batch journaled first is sent by resume; over the limit, nothing is recorded."""
    requests = [
        v.QueueRequest(model="stable-audio-25", prompt=f"journaled first, take {i}")
        for i in range(3)
    ]
    keys = [f"line-{i}" for i in range(3)]
    path = tmp_path / "jobs.sqlite3"
    async with make_session(fake_server, journal=path, max_spend_usd=0.5) as session:
        with pytest.raises(v.SpendLimitExceeded, match="nothing was spent"):
            await session.journal_requests(requests, keys=keys)  # 3 x $0.24
        assert session.journal is not None
        assert await session.journal.entries() == []
        cost = await session.journal_requests(requests[:2], keys=keys[:2])
        assert cost == pytest.approx(0.48)
        assert fake_server.count("queue") == 0  # recorded, not sent
        report = await session.resume()
    assert report.queued == 2
    assert fake_server.count("queue") == 2
    async with make_session(fake_server) as session:
        with pytest.raises(v.SessionStateError, match="needs a journal"):
            await session.journal_requests(requests)
