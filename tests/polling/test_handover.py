"""Outcomes belong to the session until a caller takes them: leaving early loses nothing."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path

import anyio
import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, JobScript

from ..conftest import API_KEY, UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"


async def _until(predicate: object, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.005)


async def test_break_leaves_the_other_outcomes_to_a_later_results(
    fake_server: FakeServer,
) -> None:
    """5 jobs, one taken, break: the other four are listed, kept on the server, then delivered."""
    fake_server.plan(*[JobScript(duration=1.0) for _ in range(5)])
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        jobs = [await session.submit(MODEL, f"a tiny sound {i}") for i in range(5)]
        await _until(lambda: len(session.finished()) == 5)
        async with session.results(jobs) as results:
            first = await results.__anext__()
        others = [job for job in jobs if job != first.job]
        assert sorted(j.queue_id for j in session.finished()) == sorted(j.queue_id for j in others)
        assert session.unfinished() == []
        await _until(lambda: fake_server.count("complete") == 1)  # only the taken one
        async with session.results(others) as results:
            got = [outcome async for outcome in results]
        assert {o.job for o in got} == set(others)
        assert all(isinstance(o, v.Succeeded) and o.audio.data for o in got)
        assert session.finished() == []
    assert fake_server.count("complete") == 5


async def test_wait_for_a_taken_job_names_it(fake_server: FakeServer) -> None:
    """Asking again for an outcome already handed over is a clear error naming the job."""
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        job = await session.submit(MODEL, "a tiny sound")
        await session.wait_for(job)
        with pytest.raises(v.OutcomeAlreadyTaken, match=job.queue_id):
            await session.wait_for(job)


async def test_cancelled_wait_for_leaves_the_outcome(fake_server: FakeServer) -> None:
    """A wait_for that times out leaves a later outcome to the next wait_for."""
    fake_server.plan(JobScript(duration=50.0))
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        job = await session.submit(MODEL, "a tiny sound")
        with pytest.raises(v.JobDeadlineExceeded):
            await session.wait_for(job, timeout=1.0)
        await _until(lambda: session.finished() == [job])
        assert (await session.wait_for(job)).data


async def test_cancelled_consumers_lose_nothing(fake_server: FakeServer) -> None:
    """50 consumers cancelled at random over 20 jobs: each job delivered or still listed."""
    rng = random.Random(7)
    fake_server.plan(*[JobScript(duration=rng.uniform(1.0, 20.0)) for _ in range(20)])
    delivered: list[v.Job] = []
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        jobs = [await session.submit(MODEL, f"a tiny sound {i}") for i in range(20)]

        async def consume(wanted: list[v.Job], after: float) -> None:
            with anyio.move_on_after(after):
                try:
                    async with session.results(wanted) as results:
                        async for outcome in results:
                            delivered.append(outcome.job)
                except v.OutcomeAlreadyTaken:
                    pass

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                mine = [j for j in jobs if j not in delivered]
                wanted = rng.sample(mine, k=min(len(mine), rng.randint(1, 6)))
                if wanted:
                    tg.start_soon(consume, wanted, rng.uniform(0.0, 0.03))
                await anyio.sleep(0.001)
        left = session.unfinished() + session.finished()
        assert set(delivered) | set(left) == set(jobs)
        async with session.results(left) as results:
            delivered += [outcome.job async for outcome in results]
        assert set(delivered) == set(jobs)
        assert session.finished() == session.unfinished() == []


async def test_close_lists_untaken_outcomes(
    fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing with outcomes nobody took logs their ids and keeps their media."""
    fake_server.plan(JobScript(duration=1.0))
    with caplog.at_level(logging.WARNING, logger="venice_audio_async"):
        async with make_session(fake_server, rate_limits=UNLIMITED) as session:
            job = await session.submit(MODEL, "a tiny sound")
            await _until(lambda: session.finished() == [job])
    assert job.queue_id in caplog.text
    assert "nobody took" in caplog.text
    assert fake_server.count("complete") == 0


async def test_untaken_audio_over_the_cap_is_downloaded_again(fake_server: FakeServer) -> None:
    """Over max_untaken_bytes the oldest untaken audio is dropped, kept on the server,
    and downloaded again when taken."""
    fake_server.plan(*[JobScript(duration=1.0 + i) for i in range(3)])
    async with make_session(fake_server, rate_limits=UNLIMITED) as probe:
        size = len((await probe.generate(MODEL, "a tiny sound to measure")).data or b"")
    fake_server.plan(*[JobScript(duration=1.0 + i) for i in range(3)])
    limits = v.Limits(max_untaken_bytes=2 * size + size // 2)  # room for two
    async with make_session(fake_server, rate_limits=UNLIMITED, limits=limits) as session:
        jobs = [await session.submit(MODEL, f"a tiny sound {i}") for i in range(3)]
        await _until(lambda: len(session.finished()) == 3 and session.unfinished() == [])
        assert session._scheduler.jobs.held.bytes <= limits.max_untaken_bytes
        retrieves = fake_server.count("retrieve")
        assert fake_server.count("complete") == 1  # only the probe's
        async with session.results(jobs) as results:
            got = {o.job: o async for o in results}
        assert set(got) == set(jobs)
        for job, outcome in got.items():
            assert isinstance(outcome, v.Succeeded)
            assert outcome.audio.data == fake_server.audio_for(job.queue_id)
        assert fake_server.count("retrieve") == retrieves + 1  # the dropped one, again
        assert session.finished() == []


async def test_taken_outcomes_are_dropped_and_their_record_is_bounded(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken outcomes leave the session; only the last few taken ids are remembered."""
    from venice_audio_async._polling import held_audio as _held_audio

    monkeypatch.setattr(_held_audio, "HANDED_RECORD", 3)
    fake_server.plan(*[JobScript(duration=1.0) for _ in range(6)])
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        jobs = [await session.submit(MODEL, f"a tiny sound {i}") for i in range(6)]
        for job in jobs:
            await session.wait_for(job)
        scheduler = session._parts.scheduler
        assert not any(job.queue_id in scheduler.jobs for job in jobs)
        assert [scheduler.jobs.was_taken(job.queue_id) for job in jobs] == [False] * 3 + [True] * 3
        with pytest.raises(v.OutcomeAlreadyTaken, match=jobs[-1].queue_id):
            await session.wait_for(jobs[-1])
        with pytest.raises(ValueError, match="not tracked"):
            await session.wait_for(jobs[0])  # forgotten: the record does not grow


# --------------------------------------------------------------------------- one hand-over rule

#: Every way an outcome leaves the session (the CLI is tested below, as a user runs it).
ENTRY_POINTS = [
    "results_list",
    "results_iterable",
    "results_async",
    "generate_many",
    "wait_for",
    "wait_outcome",
    "generate",
]
#: The entry points a consumer can leave with outcomes still unread.
STREAMS = ["results_list", "results_iterable", "results_async", "generate_many"]


async def _submitted(session: v.AsyncSession, count: int) -> list[v.Job]:
    return [await session.submit(MODEL, f"a tiny sound {i}") for i in range(count)]


async def _outcomes(
    server: FakeServer, session: v.AsyncSession, entry: str, count: int
) -> list[v.Outcome]:
    """Every outcome of ``count`` new jobs, taken through ``entry``."""
    got: list[v.Outcome] = []
    if entry in ("results_list", "results_iterable"):
        jobs = await _submitted(session, count)
        wanted = jobs if entry == "results_list" else (job for job in jobs)
        async with session.results(wanted) as results:
            got = [outcome async for outcome in results]
    elif entry == "results_async":
        send, receive = anyio.create_memory_object_stream[v.Job](count)
        with receive:
            async with session.results(receive) as followed:
                async with send:
                    for job in await _submitted(session, count):
                        await send.send(job)
                got = [outcome async for outcome in followed]
    elif entry == "generate_many":
        requests = [v.QueueRequest(MODEL, f"a tiny sound {i}") for i in range(count)]
        async with session.generate_many(requests) as batch:
            async for item in batch:
                assert not isinstance(item, v.Refused), item
                got.append(item)
    elif entry == "wait_for":
        for job in await _submitted(session, count):
            got.append(v.Succeeded(job, await session.wait_for(job)))
    elif entry == "wait_outcome":
        got = [await session.wait_outcome(job) for job in await _submitted(session, count)]
    else:
        assert entry == "generate"
        for i in range(count):
            audio = await session.generate(MODEL, f"a tiny sound {i}")
            # generate's result does not name its job: the one the server queued last.
            got.append(v.Succeeded(v.Job(MODEL, server.queue_ids()[-1]), audio))
    return got


@pytest.mark.parametrize("where", ["memory", "folder"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_every_way_out_takes_what_it_hands_over(
    fake_server: FakeServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    entry: str,
    where: str,
) -> None:
    """Whatever hands an outcome over takes it: nothing untaken or listed afterwards, one
    complete per job, no "nobody took" at close, and asking again is OutcomeAlreadyTaken."""
    count = 3
    fake_server.plan(*[JobScript(duration=1.0 + i) for i in range(count)])
    options = {"output_dir": tmp_path} if where == "folder" else {}
    with caplog.at_level(logging.WARNING, logger="venice_audio_async"):
        async with make_session(fake_server, rate_limits=UNLIMITED, **options) as session:
            got = await _outcomes(fake_server, session, entry, count)
            assert len({outcome.job for outcome in got}) == count
            assert all(isinstance(o, v.Succeeded) for o in got)
            assert session.statistics().outcomes_untaken == 0
            assert session.finished() == session.unfinished() == []
            await _until(lambda: fake_server.count("complete") == count)
            for outcome in got:
                with pytest.raises(v.OutcomeAlreadyTaken, match=outcome.job.queue_id):
                    await session.wait_for(outcome.job)
    assert fake_server.count("complete") == count  # once each, never twice
    assert "nobody took" not in caplog.text
    assert session.statistics().jobs_failed == 0


@pytest.mark.parametrize("where", ["memory", "folder"])
@pytest.mark.parametrize("entry", STREAMS)
async def test_leaving_early_leaves_the_rest_untaken(
    fake_server: FakeServer, tmp_path: Path, entry: str, where: str
) -> None:
    """One outcome yielded, then the consumer leaves with the others already in its stream:
    only the yielded one is taken; the others stay listed and are delivered later."""
    count = 4
    fake_server.plan(*[JobScript(duration=1.0 + i) for i in range(count)])
    options = {"output_dir": tmp_path} if where == "folder" else {}
    async with make_session(fake_server, rate_limits=UNLIMITED, **options) as session:
        all_finished = lambda: len(session.finished()) == count  # noqa: E731
        if entry == "generate_many":
            requests = [v.QueueRequest(MODEL, f"a tiny sound {i}") for i in range(count)]
            async with session.generate_many(requests) as batch:
                await _until(all_finished)
                first: v.BatchOutcome = await batch.__anext__()
        elif entry == "results_async":
            send, receive = anyio.create_memory_object_stream[v.Job](count)
            with receive:
                async with session.results(receive) as followed:
                    async with send:
                        for job in await _submitted(session, count):
                            await send.send(job)
                    await _until(all_finished)
                    first = await followed.__anext__()
        else:
            jobs = await _submitted(session, count)
            await _until(all_finished)
            wanted = jobs if entry == "results_list" else (job for job in jobs)
            async with session.results(wanted) as results:
                first = await results.__anext__()
        assert isinstance(first, v.Succeeded)
        rest = session.finished()
        assert first.job not in rest
        assert len(rest) == count - 1
        assert session.statistics().outcomes_untaken == count - 1
        # In memory only the taken one is released; stored files are released at once.
        released = 1 if where == "memory" else count
        await _until(lambda: fake_server.count("complete") == released)
        with pytest.raises(v.OutcomeAlreadyTaken):
            await session.wait_for(first.job)
        for job in rest:
            assert (await session.wait_for(job)).read_bytes() == fake_server.audio_for(job.queue_id)
        assert session.finished() == []
    assert fake_server.count("complete") == count


@pytest.mark.parametrize("command", ["batch", "generate"])
async def test_the_command_line_takes_what_it_writes(
    fake_server: FakeServer, tmp_path: Path, command: str
) -> None:
    """The CLI, run as a user runs it: each job's file written and its media released once,
    and no "nobody took" warning at the end."""
    count = 3 if command == "batch" else 1
    fake_server.plan(*[JobScript(duration=1.0 + i) for i in range(count)])
    out = tmp_path / "out"
    if command == "batch":
        lines = tmp_path / "lines.jsonl"
        rows = [{"model": MODEL, "prompt": f"soft rain {i}"} for i in range(count)]
        lines.write_text("".join(json.dumps(row) + "\n" for row in rows))
        args = ["batch", str(lines), "--out", str(out)]
    else:
        out.mkdir()
        args = ["generate", MODEL, "soft rain falling", "--out", str(out)]
    argv = [sys.executable, "-m", "venice_audio_async", *args, "--plain"]
    argv += ["--base-url", fake_server.url, "--time-scale", "0.02", "--log-level", "info"]
    env = {**os.environ, "VENICE_API_KEY": API_KEY}
    env.pop("VENICE_AUDIO_LOG", None)
    result = await anyio.run_process(argv, env=env, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "nobody took" not in stderr
    assert len(list(out.glob("*.wav"))) == count
    assert fake_server.count("complete") == count


# --------------------------------------------------------------------------- attached again


async def test_attaching_a_job_handed_over_in_memory_raises_without_a_poll(
    fake_server: FakeServer,
) -> None:
    """attach + wait_for of a job whose in-memory audio was handed over (and its media
    released) is OutcomeAlreadyTaken: no poll into a 404, no failure counted."""
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED) as session:
        job = await session.submit(MODEL, "a tiny sound")
        await session.wait_for(job)
        await _until(lambda: fake_server.count("complete") == 1)
        retrieves = fake_server.count("retrieve")
        again = session.attach(MODEL, job.queue_id)
        with pytest.raises(v.OutcomeAlreadyTaken, match=job.queue_id):
            await session.wait_for(again)
        assert fake_server.count("retrieve") == retrieves
        assert session.statistics().jobs_failed == 0
        assert session.status(again).phase == "succeeded"
        assert session.finished() == session.unfinished() == []


async def test_attaching_a_job_handed_over_to_a_file_returns_that_file(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """attach + wait_for of a job whose audio was stored and handed over returns the same
    file (as often as asked), without a poll; a plain second wait_for still raises."""
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED, output_dir=tmp_path) as session:
        job = await session.submit(MODEL, "a tiny sound")
        first = await session.wait_for(job)
        assert first.path is not None
        retrieves = fake_server.count("retrieve")
        for _ in range(2):
            again = await session.wait_for(session.attach(MODEL, job.queue_id))
            assert again.path == first.path
            assert again.read_bytes() == fake_server.audio_for(job.queue_id)
            assert session.finished() == []
            with pytest.raises(v.OutcomeAlreadyTaken):
                await session.wait_for(job)
        assert fake_server.count("retrieve") == retrieves
        assert session.statistics().jobs_failed == 0
    assert fake_server.count("complete") == 1


async def test_attaching_a_job_whose_file_is_gone_raises_without_a_poll(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """The stored file was deleted since: attach + wait_for raises OutcomeAlreadyTaken
    (the media was released once stored), never a poll into a 404."""
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, rate_limits=UNLIMITED, output_dir=tmp_path) as session:
        job = await session.submit(MODEL, "a tiny sound")
        audio = await session.wait_for(job)
        assert audio.path is not None
        audio.path.unlink()
        retrieves = fake_server.count("retrieve")
        with pytest.raises(v.OutcomeAlreadyTaken):
            await session.wait_for(session.attach(MODEL, job.queue_id))
        assert fake_server.count("retrieve") == retrieves
        assert session.statistics().jobs_failed == 0
