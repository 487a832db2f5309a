"""What a session reports of paid jobs: the money spent with or without a limit, which job
an audio result belongs to, and how long a job has left from the moment it is queued."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, JobScript
from venice_audio_async.types import PRIOR_RUN_SECONDS

from ..conftest import UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"  # the catalogue prices it at $0.24 a generation
PROMPT = "a cheerful ten second jingle"


# --------------------------------------------------------------------------- spent_usd


@pytest.mark.parametrize("limit", [None, 100.0], ids=["no-limit", "limit"])
async def test_spent_usd_is_estimated_with_or_without_a_limit(
    fake_server: FakeServer, limit: float | None
) -> None:
    """Two paid jobs: spent_usd is $0.48 from the catalogue's price, without a quote."""
    fake_server.plan(JobScript(duration=1.0), JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED, max_spend_usd=limit) as session:
        assert session.statistics().spent_usd == 0.0
        for index in range(2):
            await session.generate(MODEL, f"{PROMPT} {index}")
        stats = session.statistics()
    assert stats.spent_usd == pytest.approx(0.48)
    assert stats.spend_limit_usd == limit
    assert fake_server.count("queue") == 2
    assert fake_server.count("quote") == 0


async def test_without_validation_the_price_comes_from_the_catalogue_read_for_the_model(
    fake_server: FakeServer,
) -> None:
    """validate=False still reads the catalogue once (unknown models are refused whatever
    validate says), so the job is priced from it: no quote is asked."""
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        await session.generate(MODEL, PROMPT, validate=False)
        assert session.statistics().spent_usd == pytest.approx(0.24)
    assert fake_server.count("models") == 1
    assert fake_server.count("quote") == 0


# --------------------------------------------------------------------------- AudioResult


async def test_generate_names_the_job_of_its_audio(fake_server: FakeServer) -> None:
    """generate() returns audio that says its queue id and model (for a web app's logs)."""
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        audio = await session.generate(MODEL, PROMPT)
    assert audio.queue_id == fake_server.queue_ids()[0]
    assert audio.model == MODEL
    assert audio.data is not None


async def test_results_on_disk_and_from_the_journal_name_their_job(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A result streamed to a file names its job, and so does one read back from the
    journal (a keyed request submitted again in a later session)."""
    fake_server.plan(JobScript(duration=1.0))
    options = {"rate_limits": UNLIMITED, "journal": tmp_path / "j.sqlite3"}
    async with make_session(fake_server, output_dir=tmp_path, **options) as session:
        job = await session.submit(MODEL, PROMPT, key="jingle-1")
        async with session.results([job]) as results:
            outcomes = [outcome async for outcome in results]
    assert isinstance(outcomes[0], v.Succeeded)
    stored = outcomes[0].audio
    assert (stored.queue_id, stored.model) == (job.queue_id, MODEL)
    assert stored.path is not None
    async with make_session(fake_server, **options) as session:
        again = await session.submit(MODEL, PROMPT, key="jingle-1")
        audio = await session.wait_for(again)
    assert (audio.queue_id, audio.model) == (job.queue_id, MODEL)
    assert fake_server.count("queue") == 1


def test_an_audio_result_built_by_hand_still_works() -> None:
    """The new fields are optional: existing constructor calls keep working."""
    audio = v.AudioResult(content_type="audio/mpeg", format="mp3", size=3, data=b"abc")
    assert (audio.queue_id, audio.model) == (None, None)


# --------------------------------------------------------------------------- status estimates


async def test_status_right_after_submit_has_an_estimate_marked_as_a_prior(
    fake_server: FakeServer,
) -> None:
    """Nothing known of the model yet: ~60 s left, marked "prior" (the README's bot prints a
    number, not "?")."""
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        job = await session.submit(MODEL, PROMPT)
        status = session.status(job)
        assert status.phase == "queued"
        assert status.estimate_source == "prior"
        assert status.estimated_seconds_left is not None
        assert 55.0 < status.estimated_seconds_left <= PRIOR_RUN_SECONDS
        line = f"{status.phase}, about {status.estimated_seconds_left or 0:.0f} s left"
        assert re.fullmatch(r"queued, about \d+ s left", line)
        await session.wait_for(job)


async def test_status_uses_the_models_last_server_estimate_then_its_learned_run_times(
    fake_server: FakeServer,
) -> None:
    """After a job of the model answered: its average_execution_time ("model_hint"); after
    ten finished: the run times learned ("learned"): 4 s runs (as their polls saw them)."""
    long = JobScript(duration=1000.0, average_execution_time=30.0)
    fake_server.plan(long, long)
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        first = await session.submit(MODEL, PROMPT)
        clock = session._parts.clock
        while session.status(first).phase == "queued":
            await clock.sleep(0.5)
        job = await session.submit(MODEL, f"{PROMPT} again")
        status = session.status(job)
        assert status.estimate_source == "model_hint"
        assert status.estimated_seconds_left == pytest.approx(30.0, abs=5.0)
        for running in (first, job):  # no run time of theirs is learned
            session.forget(running)

        fake_server.plan(*[JobScript(duration=4.0, average_execution_time=30.0)] * 10)
        jobs = [await session.submit(MODEL, f"{PROMPT} {i}") for i in range(10)]
        async with session.results(jobs) as results:
            assert len([outcome async for outcome in results]) == 10
        fresh = await session.submit(MODEL, f"{PROMPT} fresh")
        learned = session.status(fresh)
        assert learned.phase == "queued"
        assert learned.estimate_source == "learned"
        assert learned.estimated_seconds_left is not None
        assert 3.0 < learned.estimated_seconds_left < 20.0  # not the hint (30), not the prior
        await session.wait_for(fresh)


async def test_a_running_job_keeps_its_own_server_estimate(fake_server: FakeServer) -> None:
    """Once the job itself answered, its own average_execution_time rules ("job")."""
    fake_server.plan(JobScript(duration=50.0, average_execution_time=60.0))
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        job = await session.submit(MODEL, PROMPT)
        clock = session._parts.clock
        while session.status(job).phase == "queued":
            await clock.sleep(0.5)
        running = session.status(job)
        assert running.phase == "running"
        assert running.estimate_source == "job"
        assert running.estimated_seconds_left is not None
        assert running.estimated_seconds_left < 60.0
        await session.wait_for(job)
        assert session.status(job).estimate_source is None  # ended: nothing left to run
