"""Keyed requests are queued once per journal; refusals by the spending limit are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async.journal import JobState
from venice_audio_async.testing import FakeServer, JobScript

from ..conftest import UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"


def _requests(n: int) -> list[v.QueueRequest]:
    return [
        v.QueueRequest(model=MODEL, prompt=f"a tiny track {i}", key=f"track-{i}") for i in range(n)
    ]


async def test_submit_many_twice_queues_each_key_once(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """The same keyed batch submitted twice on one journal is queued once, all delivered."""
    fake_server.plan(*[JobScript(duration=1.0 if i < 2 else 500.0) for i in range(4)])
    journal = tmp_path / "j.sqlite3"
    options = {"rate_limits": UNLIMITED, "journal": journal, "output_dir": tmp_path}
    async with make_session(fake_server, **options) as session:
        first = await session.submit_many(_requests(4))
        async with session.results(first[:2]) as results:
            assert len([o async for o in results]) == 2  # two stored, two still running
        again = await session.submit_many(_requests(4))  # same session: attached
        assert again == first
    assert fake_server.count("queue") == 4
    assert all("key" not in r.body for r in fake_server.requests_to("queue"))
    async with make_session(fake_server, **options) as session:
        jobs = await session.submit_many(_requests(4))
        assert [j.queue_id for j in jobs] == [j.queue_id for j in first]
        stored = await session.wait_outcome(jobs[0])
        assert isinstance(stored, v.Succeeded)
        assert stored.audio.path is not None
        assert stored.audio.path.read_bytes() == fake_server.audio_for(jobs[0].queue_id)
    assert fake_server.count("queue") == 4


async def test_unkeyed_requests_are_not_deduplicated(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Identical unkeyed prompts are separate jobs."""
    fake_server.plan(JobScript(duration=1.0), JobScript(duration=1.0))
    request = v.QueueRequest(model=MODEL, prompt="rain on a tin roof")
    async with make_session(
        fake_server, rate_limits=UNLIMITED, journal=tmp_path / "j.sqlite3"
    ) as session:
        await session.submit_many([request, request])
    assert fake_server.count("queue") == 2


async def test_keyed_refusal_by_the_limit_is_finished_by_resume(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A keyed job refused by max_spend_usd is journaled; with a higher cap resume sends it."""
    fake_server.plan(JobScript(duration=1.0))
    journal = tmp_path / "j.sqlite3"
    async with make_session(
        fake_server, rate_limits=UNLIMITED, journal=journal, max_spend_usd=0.0001
    ) as session:
        with pytest.raises(v.SpendLimitExceeded):
            await session.submit_request(_requests(1)[0])
    assert fake_server.count("queue") == 0
    async with make_session(
        fake_server, rate_limits=UNLIMITED, journal=journal, max_spend_usd=100.0
    ) as session:
        report = await session.resume()
        assert report.queued == 1
        assert (await session.wait_for(report.jobs[0])).data
    assert fake_server.count("queue") == 1


async def test_unkeyed_refusals_are_journaled_and_resumed_once(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Unkeyed jobs refused by max_spend_usd are journaled as refused; resume sends each once."""
    fake_server.plan(JobScript(duration=1.0), JobScript(duration=1.0))
    journal = tmp_path / "j.sqlite3"
    request = v.QueueRequest(model=MODEL, prompt="rain on a tin roof")
    options = {"rate_limits": UNLIMITED, "journal": journal, "output_dir": tmp_path}
    async with make_session(fake_server, max_spend_usd=0.0001, **options) as session:
        with pytest.raises(v.BatchSubmitError) as caught:
            await session.submit_many([request, request])
        assert all(isinstance(e, v.SpendLimitExceeded) for e in caught.value.errors.values())
        assert session.journal is not None
        entries = await session.journal.entries()
        assert [(e.state, e.refused) for e in entries] == [(JobState.INTENT, True)] * 2
        # A batch's unkeyed requests get keys from their content and occurrence.
        assert [e.key[-2:] for e in entries if e.key and e.key.startswith("auto-")] == ["-1", "-2"]
        assert entries[0].error_type == "SpendLimitExceeded"
    assert fake_server.count("queue") == 0
    for _ in range(2):  # the second resume finds them finished: nothing is queued again
        async with make_session(fake_server, max_spend_usd=100.0, **options) as session:
            report = await session.resume()
            for job in report.jobs:
                assert (await session.wait_for(job)).size > 0
            assert session.journal is not None
            entries = await session.journal.entries()
            assert [(e.state, e.refused, e.error) for e in entries] == [
                (JobState.SUCCEEDED, False, None)
            ] * 2
        assert fake_server.count("queue") == 2


async def test_a_refusal_resubmitted_by_hand_is_a_new_job(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """An unkeyed refusal submitted again by hand is a second job; resume still sends the first."""
    fake_server.plan(*[JobScript(duration=1.0)] * 2)
    journal = tmp_path / "j.sqlite3"
    request = v.QueueRequest(model=MODEL, prompt="rain on a tin roof")
    async with make_session(
        fake_server, rate_limits=UNLIMITED, journal=journal, max_spend_usd=0.0001
    ) as session:
        with pytest.raises(v.SpendLimitExceeded):
            await session.submit_request(request)
    async with make_session(
        fake_server, rate_limits=UNLIMITED, journal=journal, max_spend_usd=100.0
    ) as session:
        by_hand = await session.submit_request(request)
        report = await session.resume()
        assert report.queued == 1
        assert report.jobs[0].queue_id != by_hand.queue_id
    assert fake_server.count("queue") == 2


async def test_refusals_without_a_journal_leave_nothing(fake_server: FakeServer) -> None:
    """Without a journal a refusal sends nothing and keeps nothing."""
    async with make_session(fake_server, rate_limits=UNLIMITED, max_spend_usd=0.0001) as session:
        with pytest.raises(v.SpendLimitExceeded):
            await session.submit_request(v.QueueRequest(model=MODEL, prompt="rain on a tin roof"))
        assert session.spending()[0] == 0.0
    assert fake_server.count("queue") == 0
