"""A journaled batch run again finishes it: keys derived from content, never paid twice."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import venice_audio_async as v
from venice_audio_async._ledger.replay import derive_keys
from venice_audio_async.journal import Journal
from venice_audio_async.testing import FakeServer, Fault, JobScript

from ..conftest import API_KEY, TIME_SCALE, UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "ace-step-15"
#: Makes every prompt long enough for the model's rules.
SUFFIX = ", a lo-fi beat"


def _script(body: Mapping[str, Any]) -> JobScript:
    """Jobs by prompt: "slow ..." runs long, "fails ..." fails with a content-policy 422."""
    prompt = str(body.get("prompt"))
    if prompt.startswith("fails"):
        return JobScript(duration=1.0, fail_status=422)
    return JobScript(duration=400.0 if prompt.startswith("slow") else 1.0)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer(time_scale=TIME_SCALE, api_keys=[API_KEY], job_script=_script) as fake:
        yield fake


def _beats(prompts: Sequence[str]) -> list[v.QueueRequest]:
    return [v.QueueRequest(model=MODEL, prompt=p + SUFFIX, duration_seconds=60) for p in prompts]


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".wav", ".mp3", ".flac"))


async def _run(
    server: FakeServer,
    folder: Path,
    requests: list[v.QueueRequest],
    *,
    stop_after: int | None = None,
    **options: Any,
) -> list[v.BatchOutcome]:
    """The README's batch as a script: journal and output folder, every outcome read."""
    outcomes: list[v.BatchOutcome] = []
    async with (
        make_session(
            server,
            rate_limits=UNLIMITED,
            output_dir=folder,
            journal=folder / "journal.sqlite3",
            max_spend_usd=20,
        ) as session,
        session.generate_many(requests, **options) as results,
    ):
        async for outcome in results:
            outcomes.append(outcome)
            if len(outcomes) == stop_after:
                break  # interrupted: the script is stopped here
    return outcomes


def _prompt(outcome: v.BatchOutcome) -> str:
    if isinstance(outcome, v.Refused):
        return outcome.request.prompt.removesuffix(SUFFIX)
    assert outcome.job.request is not None
    return outcome.job.request.prompt.removesuffix(SUFFIX)


async def test_a_rerun_after_an_interruption_queues_each_request_once(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """12 requests, stopped after 4 results, run again as the same script: 12 queue calls,
    12 files, every track delivered once to the second run (the 4 from their files)."""
    prompts = [f"lo-fi beat number {i}" for i in range(4)]
    prompts += [f"slow lo-fi beat number {i}" for i in range(4, 12)]
    first = await _run(server, tmp_path, _beats(prompts), stop_after=4)
    assert all(isinstance(o, v.Succeeded) for o in first)
    assert server.count("queue") == 12
    with caplog.at_level(logging.INFO, logger="venice_audio_async"):
        again = await _run(server, tmp_path, _beats(prompts))
    assert server.count("queue") == 12  # nothing queued a second time
    assert sorted(_prompt(o) for o in again) == sorted(prompts)
    succeeded = [o for o in again if isinstance(o, v.Succeeded)]
    assert len(succeeded) == 12
    files = _audio_files(tmp_path)
    assert len(files) == 12
    assert sorted(o.audio.path for o in succeeded if o.audio.path) == files
    by_id = {o.job.queue_id: o for o in succeeded}
    for early in first:
        assert isinstance(early, v.Succeeded)
        assert by_id[early.job.queue_id].audio.path == early.audio.path
    said = [r.getMessage() for r in caplog.records if "already in the journal" in r.getMessage()]
    assert said, caplog.text
    assert said[0].startswith("12 of 12 request(s)"), said


async def test_reordered_and_inserted_requests_are_not_paid_again(
    server: FakeServer, tmp_path: Path
) -> None:
    """A re-run with the lines reordered and one inserted queues only the new one."""
    first = await _run(server, tmp_path, _beats(["a", "b", "c"]))
    assert server.count("queue") == 3
    again = await _run(server, tmp_path, _beats(["c", "new", "a", "b"]))
    assert server.count("queue") == 4
    assert server.requests_to("queue")[-1].body["prompt"] == "new" + SUFFIX
    paths = {_prompt(o): o.audio.path for o in first if isinstance(o, v.Succeeded)}
    for outcome in again:
        assert isinstance(outcome, v.Succeeded)
        if _prompt(outcome) != "new":
            assert outcome.audio.path == paths[_prompt(outcome)]
    assert len(_audio_files(tmp_path)) == 4


async def test_identical_requests_are_separate_jobs_and_stay_so(
    server: FakeServer, tmp_path: Path
) -> None:
    """Two identical lines are two jobs; run again, still two; a third copy is one more."""
    await _run(server, tmp_path, _beats(["rain", "rain"]))
    assert server.count("queue") == 2
    await _run(server, tmp_path, _beats(["rain", "rain"]))
    assert server.count("queue") == 2
    third = await _run(server, tmp_path, _beats(["rain", "rain", "rain"]))
    assert server.count("queue") == 3
    assert len({o.job.queue_id for o in third if isinstance(o, v.Succeeded)}) == 3


async def test_failed_refused_and_unknown_are_reported_from_the_journal(
    server: FakeServer, tmp_path: Path
) -> None:
    """A re-run reports what the first run saw, sending nothing: the job that failed as
    ``Failed`` with its error's class and status, the 402 and the lost answer as ``Refused``."""
    await _run(server, tmp_path, _beats(["ok", "fails badly"]))
    server.inject("queue", Fault.status(402))
    [refused] = await _run(server, tmp_path, _beats(["refused"]))
    server.inject("queue", Fault.drop())
    [lost] = await _run(server, tmp_path, _beats(["lost"]))
    assert isinstance(refused, v.Refused)
    assert isinstance(refused.error, v.PaymentRequiredError)
    assert isinstance(lost, v.Refused)
    assert isinstance(lost.error, v.QueueOutcomeUnknown)
    sent = server.count("queue")
    assert sent == 4  # the dropped answer's job was created

    again = await _run(server, tmp_path, _beats(["lost", "ok", "fails badly", "refused"]))
    assert server.count("queue") == sent
    by_prompt = {_prompt(o): o for o in again}
    assert isinstance(by_prompt["ok"], v.Succeeded)
    failed = by_prompt["fails badly"]
    assert isinstance(failed, v.Failed)
    assert isinstance(failed.error, v.ContentPolicyError)
    assert failed.error.status_code == 422
    assert isinstance(by_prompt["refused"], v.Refused)
    assert isinstance(by_prompt["refused"].error, v.PaymentRequiredError)
    assert isinstance(by_prompt["lost"], v.Refused)
    assert isinstance(by_prompt["lost"].error, v.QueueOutcomeUnknown)


async def test_a_take_label_is_a_deliberate_second_take(server: FakeServer, tmp_path: Path) -> None:
    """``take=`` queues the batch again, once: run again with the same take, it is finished."""
    await _run(server, tmp_path, _beats(["a", "b"]))
    second = await _run(server, tmp_path, _beats(["a", "b"]), take="second")
    assert server.count("queue") == 4
    await _run(server, tmp_path, _beats(["a", "b"]), take="second")
    await _run(server, tmp_path, _beats(["a", "b"]))
    assert server.count("queue") == 4
    assert all(isinstance(o, v.Succeeded) for o in second)
    assert len(_audio_files(tmp_path)) == 4


async def test_submit_many_and_journal_requests_rerun_once(
    server: FakeServer, tmp_path: Path
) -> None:
    """submit_many of the same unkeyed batch on one journal queues each request once;
    journal_requests of the same batch records it once; a lone unkeyed submit is a new job."""
    options = {"rate_limits": UNLIMITED, "journal": tmp_path / "j.sqlite3", "output_dir": tmp_path}
    requests = _beats(["x", "y", "x"])
    async with make_session(server, **options) as session:
        first = await session.submit_many(requests)
    async with make_session(server, **options) as session:
        again = await session.submit_many(requests)
        assert [j.queue_id for j in again] == [j.queue_id for j in first]
        async with session.results(again) as results:
            assert len([o async for o in results if isinstance(o, v.Succeeded)]) == 3
        await session.submit_request(requests[0])  # unkeyed and alone: a new job
        await session.submit_request(requests[0])
    assert server.count("queue") == 5

    async with make_session(server, rate_limits=UNLIMITED, journal=tmp_path / "k.sqlite3") as s:
        cost = await s.journal_requests(requests)
        assert cost > 0
        assert await s.journal_requests(requests) == 0.0
        assert s.journal is not None
        assert len(await s.journal.entries()) == 3


async def test_a_request_refused_for_want_of_a_token_is_sent_on_a_rerun(
    server: FakeServer, tmp_path: Path
) -> None:
    """A row "rejected" here for want of a queue token in time never left: a re-run sends it."""
    request = _beats(["late"])[0]
    [key] = derive_keys([request], targets=[tmp_path], names=[None], take=None)
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    async with journal:
        row = await journal.add_intent(request, key=key, destination=str(tmp_path))
        await journal.mark_sending(row)
        await journal.mark_rejected(row, v.QueueDeadlineExceeded(request, 1.0))
    [outcome] = await _run(server, tmp_path, [request])
    assert isinstance(outcome, v.Succeeded)
    assert server.count("queue") == 1


def test_derived_keys_depend_on_content_place_and_occurrence_only(tmp_path: Path) -> None:
    """Same content and destination: same key wherever it stands; occurrence counts apart."""
    a, b = _beats(["a", "b"])
    keys = derive_keys([a, b, a], targets=[tmp_path] * 3, names=[None] * 3, take=None)
    moved = derive_keys([b, a, a], targets=[tmp_path] * 3, names=[None] * 3, take=None)
    assert keys[0] == moved[1]
    assert keys[1] == moved[0]
    assert keys[2] == moved[2]
    assert keys[0] != keys[2]
    assert re.fullmatch(r"auto-[0-9a-f]{32}-2", keys[2])
    elsewhere = derive_keys([a], targets=[tmp_path / "x"], names=[None], take=None)
    named = derive_keys([a], targets=[tmp_path], names=["intro"], take=None)
    assert len({keys[0], elsewhere[0], named[0]}) == 3
    keyed = v.QueueRequest(model=MODEL, prompt="a", key="mine")
    assert derive_keys([keyed], targets=[None], names=[None], take=None) == ["mine"]


class _Stopped(Exception):
    """Stands for the user's Ctrl-C in the middle of the README's batch."""


async def test_the_readmes_batch_run_again_after_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The README's batch example, stopped after 50 results and run again as it is: 200
    queue calls and 200 files in all, and the second run prints all 200 tracks."""
    from ..test_readme import _blocks, _namespace
    from ..test_readme import _run as run_snippet

    monkeypatch.chdir(tmp_path)
    code = next(c for c in _blocks().values() if "generate_many" in c)
    printed: list[tuple[Any, ...]] = []

    def stop_after_50(*args: Any) -> None:
        printed.append(args)
        if len(printed) == 50:
            raise _Stopped

    async with FakeServer(time_scale=TIME_SCALE, job_script=JobScript(duration=90.0)) as fake:
        with pytest.raises(_Stopped):
            await run_snippet(code, _namespace(fake, print=stop_after_50))
        first = fake.count("queue")
        assert 50 <= first <= 200, first  # (how many were queued by then depends on load)
        with sqlite3.connect(tmp_path / "tracks" / "journal.sqlite3") as db:
            (rows,) = db.execute("SELECT COUNT(*) FROM jobs").fetchone()
        db.close()
        again: list[tuple[Any, ...]] = []
        with caplog.at_level(logging.INFO, logger="venice_audio_async"):
            await run_snippet(code, _namespace(fake, print=lambda *a: again.append(a)))
        assert fake.count("queue") == 200
    assert len(list((tmp_path / "tracks").glob("*.flac"))) == 200
    assert len(again) == 200
    assert all(line[1] == "ok" for line in again)
    assert f"{rows} of 200 request(s) of the batch already in the journal" in caplog.text
