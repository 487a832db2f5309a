"""The fault matrix: every failure the network or the API can produce, one case each.

Each case checks two things: what the user sees (the exception or the outcome, its type and
message) and what the fake server's request log shows (how many requests, when, answered
how). Times in the log are virtual seconds (TIME_SCALE: one virtual second is 1 ms), so
"paused for 20 s" costs 20 ms of real time.

The soak test at the end pushes 2,000 jobs through a fake that misbehaves at random: about
5% of the requests to each endpoint meet one of that endpoint's faults from the matrix, 5%
of the jobs meet a run of dropped or unanswered polls longer than the retry attempts, and
5% of the jobs end in a failure. Skip it with ``-m "not soak"``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import pathlib
import random
import socket
import sys
import time
import tracemalloc
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

import venice_audio_async as v
from venice_audio_async._core.converters import structure_catalogue
from venice_audio_async.journal import JobState
from venice_audio_async.testing import FakeServer, Fault, JobScript, RecordedRequest
from venice_audio_async.types import CompleteRequest, FileSink, QuoteRequest, RetrieveRequest

from ..conftest import API_KEY, TIME_SCALE, UNLIMITED, make_client, make_session

pytestmark = pytest.mark.anyio

#: Short (virtual) backoffs so retries cost milliseconds.
FAST_RETRY = v.RetryPolicy(initial_backoff=1.0, max_backoff=8.0)


def _session(server: FakeServer | str, **overrides: Any) -> v.AsyncSession:
    """A session with unlimited rates (faults are tested here, not pacing) and fast retries."""
    return make_session(server, **{"rate_limits": UNLIMITED, "retry": FAST_RETRY, **overrides})


def _tasks() -> int:
    """Tasks alive in this loop, leaving out the in-process fake server's handlers."""
    return sum(
        1
        for task in asyncio.all_tasks()
        if not getattr(task.get_coro(), "__qualname__", "").startswith("RequestHandler")
    )


def _for_job(server: FakeServer, endpoint: str, queue_id: str) -> list[RecordedRequest]:
    """The logged requests of one endpoint that name ``queue_id``."""
    return [
        r
        for r in server.requests_to(endpoint)
        if isinstance(r.body, dict) and r.body.get("queue_id") == queue_id
    ]


def _files(directory: Path) -> list[str]:
    """Every entry of ``directory`` (hidden ``.part`` files included), sorted."""
    return sorted(p.name for p in directory.iterdir())


class _FailingResolver(AbstractResolver):
    """A resolver that fails like a DNS lookup of an unknown name, without any network."""

    def __init__(self) -> None:
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls += 1
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- connect


async def test_connection_refused_is_typed_and_queue_retried() -> None:
    """A refused connection is a ConnectError naming the host; queue, never sent, is retried."""
    async with FakeServer(time_scale=TIME_SCALE) as gone:
        url = gone.url  # the port is closed once the server is
    # The catalogue is given: with none, the refused connection would be met reading it.
    catalogue = structure_catalogue({"data": gone.catalogue})
    async with _session(url, validate=False, catalogue=catalogue) as session:
        with pytest.raises(v.ConnectError) as caught:
            await session.submit("stable-audio-25", "rain on a tin roof")
        stats = session.statistics()
    error = caught.value
    assert error.request_sent is False
    assert error.endpoint == "queue"
    assert "127.0.0.1" in str(error)
    assert "cannot connect" in str(error)
    assert stats.requests["queue"] == FAST_RETRY.attempts  # safe to retry: nothing was sent


async def test_dns_failure_is_connect_error_and_retrieve_retried() -> None:
    """A name that does not resolve is a ConnectError; safe calls are retried, then fail;
    a job's polls go on until it has been unreachable for ``unreachable_after``."""
    resolver = _FailingResolver()
    connector = aiohttp.TCPConnector(resolver=resolver)
    url = "https://api.venice.invalid/api/v1"
    policy = attrs.evolve(FAST_RETRY, unreachable_after=60.0)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        _session(url, http_session=http, retry=policy) as session,
    ):
        with pytest.raises(v.ConnectError) as caught:
            await session.models()
        assert resolver.calls == FAST_RETRY.attempts
        job = session.attach("stable-audio-25", "00000000-0000-4000-8000-000000000001")
        outcome = await session.wait_outcome(job)
    assert "api.venice.invalid" in str(caught.value)
    assert caught.value.request_sent is False
    assert isinstance(outcome, v.Unreachable)
    assert isinstance(outcome.error, v.JobUnreachable)
    assert isinstance(outcome.error.last_error, v.ConnectError)
    assert outcome.error.waited >= 60.0
    # the poll is safe to repeat: every attempt looked the name up again, past `attempts`
    assert resolver.calls - FAST_RETRY.attempts > FAST_RETRY.attempts


# --------------------------------------------------------------------------- queue


async def test_queue_drop_is_not_retried_and_carries_the_request(fake_server: FakeServer) -> None:
    """A queue answer lost on the wire raises QueueOutcomeUnknown once; the job was billed."""
    fake_server.inject("queue", Fault.drop())
    async with _session(fake_server) as session:
        with pytest.raises(v.QueueOutcomeUnknown) as caught:
            await session.submit("stable-audio-25", "a request whose answer is lost")
        assert session.unfinished() == []
    error = caught.value
    assert error.request.prompt == "a request whose answer is lost"
    assert error.request.model == "stable-audio-25"
    assert isinstance(error.cause, v.ConnectionDropped)
    assert error.cause.request_sent is True
    assert isinstance(error.__cause__, v.ConnectionDropped)
    assert "may have been created and billed" in str(error)
    (queued,) = fake_server.requests_to("queue")
    assert queued.status == 0  # no answer was sent
    assert len(fake_server.jobs) == 1  # the server did create (and bill) the job
    assert fake_server.count("retrieve") == 0


async def test_queue_read_timeout_is_not_retried(fake_server: FakeServer) -> None:
    """A queue that times out may have been billed: QueueOutcomeUnknown, no second queue."""
    fake_server.inject("queue", Fault.delay(200.0))  # 0.2 real s, longer than the read timeout
    async with _session(fake_server, timeouts=v.Timeouts(read=0.03)) as session:
        with pytest.raises(v.QueueOutcomeUnknown) as caught:
            await session.submit("stable-audio-25", "a slow request to queue")
    assert isinstance(caught.value.cause, v.RequestTimeout)
    assert fake_server.count("queue") == 1


async def test_batch_with_a_dropped_queue_keeps_the_other_jobs(fake_server: FakeServer) -> None:
    """In submit_many a lost queue answer is reported by index; the other jobs are delivered."""
    fake_server.plan(*[JobScript(duration=1.0) for _ in range(4)])
    requests = [v.QueueRequest("stable-audio-25", f"batch member number {i}") for i in range(4)]
    async with _session(fake_server) as session:
        fake_server.inject("queue", Fault.drop())
        with pytest.raises(v.BatchSubmitError) as caught:
            await session.submit_many(requests)
        jobs = [job for job in caught.value.jobs if job is not None]
        async with session.results(jobs) as results:
            outcomes = [o async for o in results]
    ((index, error),) = caught.value.errors.items()
    assert isinstance(error, v.QueueOutcomeUnknown)
    assert error.request == requests[index]
    assert len(jobs) == 3
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    assert fake_server.count("queue") == 4  # one each, the dropped one included


# --------------------------------------------------------------------------- download


async def test_truncated_download_is_retried_into_a_complete_file(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A body cut mid-way is fetched again; only the complete file is left, then released."""
    fake_server.plan(JobScript(duration=1.0, audio_size=400_000))
    async with _session(fake_server, output_dir=tmp_path) as session:
        job = await session.submit("elevenlabs-music", "a long song to download")
        fake_server.inject("retrieve", Fault.truncate(), queue_id=job.queue_id)
        audio = await session.wait_for(job)
    assert audio.path is not None
    assert audio.path.read_bytes() == fake_server.audio_for(job.queue_id)
    assert _files(tmp_path) == [audio.path.name]  # no partial or temporary file
    audio_answers = [r for r in _for_job(fake_server, "retrieve", job.queue_id) if r.status == 200]
    assert [r.fault for r in audio_answers][-2:] == ["truncate", None]
    assert fake_server.jobs[job.queue_id].downloads == 1
    assert fake_server.jobs[job.queue_id].released  # released only after the good download


async def test_truncated_download_with_delete_on_retrieve_fails_as_expired(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """With delete_on_retrieve a cut download cannot be fetched again: failed, no retry loop."""
    fake_server.plan(JobScript(duration=1.0, audio_size=200_000))
    async with _session(
        fake_server, output_dir=tmp_path, release_media="delete_on_retrieve"
    ) as session:
        job = await session.submit("elevenlabs-music", "a song fetched only once")
        fake_server.inject("retrieve", Fault.truncate(), queue_id=job.queue_id)
        outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.MediaNotFoundError)
    assert _files(tmp_path) == []
    statuses = [r.status for r in _for_job(fake_server, "retrieve", job.queue_id)]
    assert statuses[-2:] == [200, 404]  # the cut download, then one 404 and no more
    assert statuses.count(404) == 1


async def test_retrieve_read_timeout_is_retried_with_backoff(fake_server: FakeServer) -> None:
    """A poll that times out is retried after a backoff, and the job is still delivered."""
    fake_server.plan(JobScript(duration=0.0))
    policy = v.RetryPolicy(initial_backoff=5.0, jitter=0.0)
    timeouts = v.Timeouts(read=0.03)  # real seconds: 30 virtual seconds
    async with _session(fake_server, retry=policy, timeouts=timeouts) as session:
        job = await session.submit("stable-audio-25", "a slow server answers")
        fake_server.inject("retrieve", Fault.delay(300.0), queue_id=job.queue_id)
        audio = await session.wait_for(job)
    assert audio.data == fake_server.audio_for(job.queue_id)
    slow, retry = _for_job(fake_server, "retrieve", job.queue_id)[:2]
    assert slow.status == 0  # still being delayed when the client gave up on it
    assert fake_server.pending_faults() == 0
    # the read timeout (30 virtual s), then the 5 s backoff
    assert retry.time - slow.time >= 30.0 + 5.0 - 0.5
    assert retry.status == 200


async def test_dropped_poll_is_retried(fake_server: FakeServer) -> None:
    """A retrieve whose connection drops before the answer is safe to repeat, and is."""
    fake_server.plan(JobScript(duration=0.0))
    async with _session(fake_server) as session:
        job = await session.submit("stable-audio-25", "a dropped poll")
        fake_server.inject("retrieve", Fault.drop(), queue_id=job.queue_id)
        audio = await session.wait_for(job)
    assert audio.size > 0
    statuses = [r.status for r in _for_job(fake_server, "retrieve", job.queue_id)]
    assert statuses == [0, 200]


# --------------------------------------------------------------------------- 429

RETRY_AFTER = 20.0


def _rate_limit_fault(kind: str, server: FakeServer) -> tuple[Fault, float]:
    """A 429 telling the client to wait, and the server time (monotonic) it may resume at."""
    now = server.clock.monotonic()
    if kind == "retry-after":
        return Fault.status(429, retry_after=RETRY_AFTER), RETRY_AFTER
    # x-ratelimit-reset-requests: a Unix epoch in milliseconds (virtual), no Retry-After.
    reset_ms = int((server.clock.time() + 30.0) * 1000)
    headers = {"x-ratelimit-reset-requests": str(reset_ms)}
    return Fault.status(429, headers=headers), now + 30.0


@pytest.mark.parametrize("kind", ["retry-after", "reset-ms"])
@pytest.mark.parametrize("endpoint", ["models", "quote", "queue", "retrieve", "complete"])
async def test_429_pauses_the_whole_session(
    fake_server: FakeServer, endpoint: str, kind: str
) -> None:
    """A 429 on any endpoint holds every request until its reset; nothing is lost."""
    fake_server.plan(JobScript(duration=1.0))
    async with _session(fake_server) as session:
        fault, resume_at = _rate_limit_fault(kind, fake_server)
        fake_server.inject(endpoint, fault)
        limited_at = fake_server.clock.monotonic()
        quote = await session.quote("elevenlabs-music", duration_seconds=30)
        audio = await session.generate(
            "elevenlabs-music", "a calm piano piece", duration_seconds=30
        )
    stats = session.statistics()  # after closing: the release that follows is counted too
    assert quote.quote > 0
    (job,) = fake_server.jobs.values()
    assert audio.data == fake_server.audio_for(job.queue_id)
    assert job.released
    log = fake_server.requests
    index = next(i for i, r in enumerate(log) if r.status == 429)
    assert log[index].endpoint == endpoint
    if kind == "retry-after":
        resume_at = log[index].time + RETRY_AFTER
    assert resume_at > limited_at
    # Nothing at all was sent until the reset, whatever the endpoint.
    assert all(r.time >= resume_at - 0.5 for r in log[index + 1 :])
    assert stats.rate_limited == 1


async def test_429_pause_is_capped(fake_server: FakeServer) -> None:
    """A Retry-After longer than max_retry_after pauses only for the cap."""
    fake_server.plan(JobScript(duration=1.0))
    policy = v.RetryPolicy(initial_backoff=1.0, max_retry_after=15.0)
    async with _session(fake_server, retry=policy) as session:
        job = await session.submit("stable-audio-25", "an impatient request")
        fake_server.inject("retrieve", Fault.status(429, retry_after=3600.0))
        audio = await session.wait_for(job)
        stats = session.statistics()
    assert audio.size > 0
    limited, resumed = _for_job(fake_server, "retrieve", job.queue_id)[:2]
    assert limited.status == 429
    assert 15.0 - 0.5 <= resumed.time - limited.time < 15.0 + 20.0
    assert stats.paused_seconds == pytest.approx(15.0, abs=1.0)


# --------------------------------------------------------------------------- 5xx


async def test_5xx_burst_backs_off_exponentially_with_jitter(fake_server: FakeServer) -> None:
    """500/503 bursts on polls are retried with growing, jittered waits; every job arrives."""
    policy = v.RetryPolicy(initial_backoff=5.0, multiplier=2.0, jitter=0.5, max_backoff=100.0)
    fake_server.plan(*[JobScript(duration=0.0) for _ in range(3)])
    # Queued first and attached once the faults are set: a session's own submit may poll
    # a finished job before the next submit returns (it did on a loaded machine).
    async with make_client(fake_server) as client:
        queued = [
            await client.queue(v.QueueRequest(model="stable-audio-25", prompt=f"a busy server {i}"))
            for i in range(3)
        ]
    for job in queued:
        fake_server.inject("retrieve", Fault.status(500), times=2, queue_id=job.queue_id)
        fake_server.inject("retrieve", Fault.status(503), times=2, queue_id=job.queue_id)
    async with _session(fake_server, retry=policy) as session:
        jobs = [session.attach(job.model, job.queue_id) for job in queued]
        async with session.results(jobs) as results:
            outcomes = [o async for o in results]
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    waits = []
    for job in jobs:
        polls = _for_job(fake_server, "retrieve", job.queue_id)
        assert [r.status for r in polls] == [500, 500, 503, 503, 200]
        gaps = [b.time - a.time for a, b in itertools.pairwise(polls)]
        for retry, gap in enumerate(gaps, start=1):
            base = 5.0 * 2.0 ** (retry - 1)
            assert base * 0.75 - 0.5 <= gap <= base * 1.25 + 25.0, (retry, gap)
        waits.append(gaps)
    # Jitter: three jobs failing in step do not retry in step.
    assert len({round(w[-1]) for w in waits}) > 1 or len({round(w[-2]) for w in waits}) > 1


@pytest.mark.parametrize(
    ("status", "cls", "polls"),
    [
        (500, v.InferenceFailedError, FAST_RETRY.attempts),
        (503, v.ServiceUnavailableError, FAST_RETRY.attempts),
        (422, v.ContentPolicyError, 1),
        (400, v.BadRequestError, 1),
    ],
)
async def test_final_job_failure_is_a_typed_outcome(
    fake_server: FakeServer, status: int, cls: type[v.APIStatusError], polls: int
) -> None:
    """A job that ends in an error is Failed with its typed error; the others succeed."""
    fake_server.plan(
        JobScript(duration=1.0),
        JobScript(duration=1.0, fail_status=status, suggested_prompt="a gentle rain"),
        JobScript(duration=1.0),
    )
    async with _session(fake_server) as session:
        jobs = [await session.submit("stable-audio-25", f"a stormy night {i}") for i in range(3)]
        async with session.results(jobs) as results:
            outcomes = {o.job.queue_id: o async for o in results}
    failed = outcomes[jobs[1].queue_id]
    assert isinstance(failed, v.Failed)
    assert type(failed.error) is cls
    assert failed.error.status_code == status
    assert failed.error.endpoint == "retrieve"
    if status == 422:
        assert isinstance(failed.error, v.ContentPolicyError)
        assert failed.error.suggested_prompt == "a gentle rain"
    # 5xx may be passing trouble, so it is retried; 4xx is final at once.
    answers = [r.status for r in _for_job(fake_server, "retrieve", jobs[1].queue_id)]
    assert answers.count(status) == polls
    assert _for_job(fake_server, "complete", jobs[1].queue_id) == []
    for job in (jobs[0], jobs[2]):
        assert isinstance(outcomes[job.queue_id], v.Succeeded)


async def test_expired_media_fails_without_retry(fake_server: FakeServer) -> None:
    """Media already gone (404) is a Failed 'expired' outcome after a single poll."""
    fake_server.plan(JobScript(duration=0.0))
    async with make_client(fake_server) as client:
        queued = await client.queue(v.QueueRequest("stable-audio-25", "released too early"))
        assert (await client.complete(CompleteRequest(queued.model, queued.queue_id))).success
    async with _session(fake_server) as session:
        job = session.attach(queued.model, queued.queue_id)
        outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.MediaNotFoundError)
    assert "expired" in str(outcome.error)
    assert [r.status for r in _for_job(fake_server, "retrieve", queued.queue_id)] == [404]


async def test_invalid_queue_id_fails_without_retry(fake_server: FakeServer) -> None:
    """A queue_id the server never issued is a Failed outcome after one poll."""
    bogus = "00000000-0000-4000-8000-000000000000"
    async with _session(fake_server) as session:
        outcome = await session.wait_outcome(session.attach("stable-audio-25", bogus))
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.InvalidQueueIdError)
    assert "Request ID is invalid." in str(outcome.error)
    assert [r.status for r in _for_job(fake_server, "retrieve", bogus)] == [400]
    assert fake_server.count("complete") == 0


# --------------------------------------------------------------------------- content types


@pytest.mark.parametrize(
    ("model", "content_type", "id3", "fmt"),
    [
        ("elevenlabs-music", "application/octet-stream", False, "mp3"),
        ("stable-audio-25", "application/octet-stream", False, "wav"),
        ("ace-step-15", "application/octet-stream", False, "flac"),
        ("ace-step-15", "application/octet-stream", True, "flac"),
        ("elevenlabs-music", "audio/mpeg; charset=binary", False, "mp3"),
        ("stable-audio-25", "audio/wav;charset=utf-8", False, "wav"),
        ("ace-step-15", "audio/flac; charset=binary; rate=44100", True, "flac"),
        ("elevenlabs-music", "AUDIO/MPEG", False, "mp3"),
    ],
)
async def test_audio_media_types_are_sniffed_or_parsed(
    fake_server: FakeServer, tmp_path: Path, model: str, content_type: str, id3: bool, fmt: str
) -> None:
    """octet-stream audio is sniffed, parameters after ';' are ignored; the file is right."""
    fake_server.plan(JobScript(duration=0.0, id3=id3))
    async with _session(fake_server, output_dir=tmp_path) as session:
        job = await session.submit(model, "a short test tune")
        fake_server.inject("retrieve", Fault.content_type(content_type), queue_id=job.queue_id)
        audio = await session.wait_for(job)
    assert audio.format == fmt
    assert audio.path is not None
    assert audio.path.suffix == f".{fmt}"
    assert audio.path.read_bytes() == fake_server.audio_for(job.queue_id)
    assert _for_job(fake_server, "retrieve", job.queue_id)[-1].fault == (
        f"content_type:{content_type}"
    )


# --------------------------------------------------------------------------- 502 bodies

_BODIES = {
    "html": (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    "empty": (b"", "text/plain"),
}


@pytest.mark.parametrize("body", sorted(_BODIES))
@pytest.mark.parametrize("endpoint", ["models", "quote", "queue", "retrieve", "complete"])
async def test_502_with_html_or_empty_body_is_a_typed_error(
    fake_server: FakeServer, endpoint: str, body: str
) -> None:
    """A proxy's 502 (HTML or empty) is a ServerError with the status, never a JSON crash."""
    raw, content_type = _BODIES[body]
    async with make_client(fake_server) as client:
        fake_server.plan(JobScript(duration=0.0))
        job = await client.queue(v.QueueRequest("stable-audio-25", "behind a flaky proxy"))
        fake_server.inject(endpoint, Fault.status(502, body=raw, content_type=content_type))
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "models": client.models,
            "quote": lambda: client.quote(QuoteRequest("stable-audio-25")),
            "queue": lambda: client.queue(v.QueueRequest("stable-audio-25", "another request")),
            "retrieve": lambda: client.retrieve(RetrieveRequest(job.model, job.queue_id)),
            "complete": lambda: client.complete(CompleteRequest(job.model, job.queue_id)),
        }
        with pytest.raises(v.ServerError) as caught:
            await calls[endpoint]()
    error = caught.value
    assert error.status_code == 502
    assert error.endpoint == endpoint
    assert str(error).startswith(f"HTTP 502 on {endpoint}: ")
    if body == "html":
        assert "502 Bad Gateway" in error.message
    else:
        assert error.message == "HTTP 502 with no error message"
        assert error.body is None
    assert fake_server.requests[-1].status == 502


async def test_502_bursts_on_polls_are_retried(fake_server: FakeServer) -> None:
    """HTML 502s from a proxy in front of retrieve are retried; the job arrives."""
    fake_server.plan(JobScript(duration=0.0))
    html, content_type = _BODIES["html"]
    async with _session(fake_server) as session:
        job = await session.submit("stable-audio-25", "behind a flaky proxy")
        fake_server.inject(
            "retrieve",
            Fault.status(502, body=html, content_type=content_type),
            times=2,
            queue_id=job.queue_id,
        )
        audio = await session.wait_for(job)
    assert audio.data == fake_server.audio_for(job.queue_id)
    assert [r.status for r in _for_job(fake_server, "retrieve", job.queue_id)] == [502, 502, 200]


# --------------------------------------------------------------------------- failed polls

#: Waits capped low enough that a long run of failed polls costs little real time, and
#: high enough above the real-time noise (1 ms of it is a virtual second) to be told.
POLL_RETRY = v.RetryPolicy(initial_backoff=10.0, max_backoff=20.0, jitter=0.0)


async def test_polls_dropped_past_the_attempts_do_not_fail_the_job(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Eight dropped polls in a row (more than ``attempts``) are no verdict on the job: it
    is polled on, with waits capped at max_backoff, and delivered and journaled."""
    journal = tmp_path / "j.sqlite3"
    async with make_client(fake_server) as client:  # queued first: no poll before the faults
        fake_server.plan(JobScript(duration=0.0))
        queued = await client.queue(v.QueueRequest("stable-audio-25", "a blip on the network"))
    fake_server.inject("retrieve", Fault.drop(), times=8, queue_id=queued.queue_id)
    async with _session(fake_server, retry=POLL_RETRY, journal=journal) as session:
        job = session.attach(queued.model, queued.queue_id)
        audio = await session.wait_for(job)
    assert audio.data == fake_server.audio_for(job.queue_id)
    polls = _for_job(fake_server, "retrieve", job.queue_id)
    assert [r.status for r in polls] == [0] * 8 + [200]
    # Waits of 10, 20, 20, ... s: capped at max_backoff (uncapped they would add up to
    # 1270 s); the scheduler's tests check the cap exactly, in virtual time.
    assert polls[-1].time - polls[0].time < 600.0


async def test_status_answers_that_never_come_do_not_fail_the_job(fake_server: FakeServer) -> None:
    """Six polls cut at ``Timeouts.status`` (a server that never answers them) do not end
    the job: it is polled again and delivered once the answers come."""
    async with make_client(fake_server) as client:
        fake_server.plan(JobScript(duration=0.0))
        queued = await client.queue(v.QueueRequest("stable-audio-25", "a server that drips"))
    fake_server.inject("retrieve", Fault.delay(120.0), times=6, queue_id=queued.queue_id)
    timeouts = v.Timeouts(status=0.01)  # real seconds: 10 virtual seconds
    async with _session(fake_server, retry=POLL_RETRY, timeouts=timeouts) as session:
        job = session.attach(queued.model, queued.queue_id)
        audio = await session.wait_for(job)
    assert audio.data == fake_server.audio_for(job.queue_id)
    statuses = [r.status for r in _for_job(fake_server, "retrieve", job.queue_id)]
    assert statuses[-1] == 200
    assert len(statuses) == 7


async def test_gateway_and_proxy_answers_do_not_fail_the_job(fake_server: FakeServer) -> None:
    """502 / 504 from a gateway and a 500 / 404 with a proxy's HTML body are not the API's
    word on the job: more of them than ``attempts`` leave it to be delivered."""
    html, content_type = _BODIES["html"]
    faults = [
        Fault.status(502, body=html, content_type=content_type),
        Fault.status(504, body=b"", content_type="text/plain"),
        Fault.status(502),  # even with a JSON body: a gateway's, not the origin's
        Fault.status(500, body=html, content_type=content_type),
        Fault.status(404, body=html, content_type=content_type),
        Fault.status(503, body=b"", content_type="text/plain"),
    ]
    async with make_client(fake_server) as client:
        fake_server.plan(JobScript(duration=0.0))
        queued = await client.queue(v.QueueRequest("stable-audio-25", "behind a gateway"))
    for fault in faults:
        fake_server.inject("retrieve", fault, queue_id=queued.queue_id)
    async with _session(fake_server, retry=POLL_RETRY) as session:
        job = session.attach(queued.model, queued.queue_id)
        audio = await session.wait_for(job)
    assert audio.data == fake_server.audio_for(job.queue_id)
    statuses = [r.status for r in _for_job(fake_server, "retrieve", job.queue_id)]
    assert statuses == [502, 504, 502, 500, 404, 503, 200]


async def _drain_retrieve_faults(server: FakeServer, job: v.Job) -> None:
    """Use up the faults still waiting for ``job``'s polls (a fault cannot be withdrawn)."""
    async with make_client(server) as client:
        while server.pending_faults("retrieve"):
            with pytest.raises(v.TransportError):
                await client.retrieve(RetrieveRequest(job.model, job.queue_id))


async def test_a_job_unreachable_for_too_long_ends_unreachable_and_resumable(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Polls failing for ``unreachable_after`` end the job as JobUnreachable (results()
    ends); the journal keeps it queued, and resume delivers it once the network is back."""
    fake_server.plan(JobScript(duration=30.0), JobScript(duration=0.0))
    journal = tmp_path / "j.sqlite3"
    policy = v.RetryPolicy(initial_backoff=1.0, max_backoff=4.0, unreachable_after=60.0)
    options: dict[str, Any] = {"retry": policy, "journal": journal, "output_dir": tmp_path}
    async with _session(fake_server, **options) as session:
        # Queued through the session (journaled), running long enough for the faults
        # to meet its polls.
        cut = await session.submit("stable-audio-25", "a job behind a cut cable")
        fake_server.inject("retrieve", Fault.drop(), times=500, queue_id=cut.queue_id)
        fine = await session.submit("stable-audio-25", "a job that arrives")
        async with session.results([cut, fine]) as results:
            outcomes = {o.job.queue_id: o async for o in results}
        assert session.journal is not None
        rows = {e.queue_id: e for e in await session.journal.entries()}
    assert isinstance(outcomes[fine.queue_id], v.Succeeded)
    unreachable = outcomes[cut.queue_id]
    # An outcome of its own kind, and still a Failed for code that only knows Failed.
    assert isinstance(unreachable, v.Failed)
    match unreachable:
        case v.Unreachable(error=v.JobUnreachable() as error):
            assert error.job == cut
            assert error.waited >= 60.0
            assert isinstance(error.last_error, v.ConnectionDropped)
            assert error.__cause__ is error.last_error
        case _:
            pytest.fail(f"not unreachable: {unreachable!r}")
    assert rows[cut.queue_id].state is JobState.QUEUED  # resumable
    assert rows[fine.queue_id].state is JobState.SUCCEEDED
    assert _for_job(fake_server, "complete", cut.queue_id) == []
    polls = _for_job(fake_server, "retrieve", cut.queue_id)
    assert len(polls) > policy.attempts

    await _drain_retrieve_faults(fake_server, cut)
    async with _session(fake_server, **options) as session:
        report = await session.resume()
        assert report.attached == 1
        audio = await session.wait_for(report.jobs[0])
    assert audio.path is not None
    assert audio.path.read_bytes() == fake_server.audio_for(cut.queue_id)
    assert fake_server.count("queue") == 2


async def test_a_refused_key_on_a_poll_stops_polling_and_keeps_the_job(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A 401 on a poll raises to the caller at once, is not retried (no failures piled up
    in the API's window), and leaves the job queued in the journal for resume."""
    fake_server.plan(JobScript(duration=5.0))
    journal = tmp_path / "j.sqlite3"
    options: dict[str, Any] = {"journal": journal, "output_dir": tmp_path}
    async with _session(fake_server, **options) as session:
        job = await session.submit("stable-audio-25", "a key revoked mid-job")
        fake_server.inject("retrieve", Fault.status(401), queue_id=job.queue_id)
        with pytest.raises(v.AuthenticationError):
            await session.wait_for(job)
        assert session.journal is not None
        (entry,) = await session.journal.entries()
    assert entry.state is JobState.QUEUED
    assert [r.status for r in _for_job(fake_server, "retrieve", job.queue_id)][-1] == 401
    async with _session(fake_server, **options) as session:
        report = await session.resume()
        audio = await session.wait_for(report.jobs[0])
    assert audio.path is not None
    assert audio.path.read_bytes() == fake_server.audio_for(job.queue_id)


# --------------------------------------------------------------------------- size cap


async def test_body_over_the_memory_cap_fails_and_keeps_the_media(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Audio above the in-memory cap fails clearly, keeps nothing, and can go to a file."""
    fake_server.plan(JobScript(duration=0.0, audio_size=100_000))
    limits = v.Limits(max_audio_bytes_in_memory=20_000)
    async with _session(fake_server, limits=limits) as session:
        job = await session.submit("elevenlabs-music", "a song too big for memory")
        outcome = await session.wait_outcome(job)
        assert isinstance(outcome, v.Failed)
        error = outcome.error
        assert isinstance(error, v.ResponseTooLarge)
        assert "20000 bytes" in str(error)
        assert "file" in str(error)
        # Not retried, and not released: the media is still there to fetch to a file.
        assert len(_for_job(fake_server, "retrieve", job.queue_id)) == 1
        assert _for_job(fake_server, "complete", job.queue_id) == []
        again = session.attach(job.model, job.queue_id, destination=tmp_path)
        audio = await session.wait_for(again)
    assert audio.path is not None
    assert audio.path.read_bytes() == fake_server.audio_for(job.queue_id)


# --------------------------------------------------------------------------- cancellation


class _GatedSink(FileSink):
    """A FileSink that stops after its first chunk until the test opens the gate."""

    started: anyio.Event
    gate: anyio.Event

    async def write(self, chunk: bytes) -> None:
        await super().write(chunk)
        type(self).started.set()
        await type(self).gate.wait()


@pytest.fixture
def gated_sink(monkeypatch: pytest.MonkeyPatch) -> type[_GatedSink]:
    """Make the session download through _GatedSink."""
    _GatedSink.started = anyio.Event()
    _GatedSink.gate = anyio.Event()
    monkeypatch.setattr("venice_audio_async._core.audio.FileSink", _GatedSink)
    return _GatedSink


async def test_cancelled_consumer_mid_download_leaves_no_partial_file(
    fake_server: FakeServer, tmp_path: Path, gated_sink: type[_GatedSink]
) -> None:
    """Cancelling the task waiting on a job mid-download leaves the download whole."""
    fake_server.plan(JobScript(duration=0.0, audio_size=300_000))
    before = _tasks()
    async with _session(fake_server, output_dir=tmp_path) as session:
        job = await session.submit("elevenlabs-music", "a song interrupted")
        consumer = asyncio.get_running_loop().create_task(session.wait_for(job))
        await gated_sink.started.wait()
        assert any(name.endswith(".part") for name in _files(tmp_path))
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        gated_sink.gate.set()
        outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Succeeded)
    assert outcome.audio.path is not None
    assert outcome.audio.path.read_bytes() == fake_server.audio_for(job.queue_id)
    assert _files(tmp_path) == [outcome.audio.path.name]
    assert _tasks() == before


async def test_cancelled_session_mid_download_leaves_nothing(
    fake_server: FakeServer, tmp_path: Path, gated_sink: type[_GatedSink]
) -> None:
    """Cancelling the task that owns the session mid-download removes the partial file."""
    fake_server.plan(JobScript(duration=0.0, audio_size=300_000))
    before = _tasks()
    session = _session(fake_server, output_dir=tmp_path)

    async def consume() -> None:
        async with session:
            job = await session.submit("elevenlabs-music", "a song interrupted")
            await session.wait_for(job)

    consumer = asyncio.get_running_loop().create_task(consume())
    await gated_sink.started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert _files(tmp_path) == []
    (job,) = session.unfinished()  # paid for, not delivered: handed back
    assert fake_server.jobs[job.queue_id].released is False
    assert fake_server.count("complete") == 0
    assert _tasks() == before


# --------------------------------------------------------------------------- soak

SOAK_JOBS = 2000
SOAK_RATE = 0.05
SOAK_READ_TIMEOUT = 0.25  # real seconds
SOAK_MEMORY_CAP = 8_000
SOAK_SLOW = 600.0  # virtual seconds: longer than the read timeout
SOAK_STATUS_TIMEOUT = 0.1  # real seconds: a status answer slower than this is cut
SOAK_RUN = 6  # failed polls in a row a job may meet: more than the retry attempts
#: Never reached in a soak run: at its scale a millisecond of real time is a virtual
#: second, and 2,000 jobs queueing for request slots on a loaded machine put minutes of
#: virtual time between one job's polls, which a default 15 minutes would take for an
#: outage. (Giving up is tested on its own above, and in virtual time in test_scheduler.)
SOAK_UNREACHABLE_AFTER = 1e6


def _html_502() -> Fault:
    html, content_type = _BODIES["html"]
    return Fault.status(502, body=html, content_type=content_type)


#: Faults of the matrix, per endpoint, as the soak draws them.
_SOAK_QUEUE_FAULTS: list[Callable[[], Fault]] = [
    Fault.drop,
    lambda: Fault.delay(SOAK_SLOW),
    lambda: Fault.status(429, retry_after=2.0),
    lambda: Fault.status(503),
    lambda: Fault.status(500),
    _html_502,
    lambda: Fault.status(502, body=b"", content_type="text/plain"),
]
_SOAK_RETRIEVE_FAULTS: list[Callable[[], Fault]] = [
    Fault.drop,
    Fault.truncate,
    lambda: Fault.delay(SOAK_SLOW),
    lambda: Fault.status(429, retry_after=2.0),
    lambda: Fault.status(429, headers={"x-ratelimit-reset-requests": "0"}),
    lambda: Fault.status(500),
    lambda: Fault.status(503),
    _html_502,
    lambda: Fault.status(502, body=b"", content_type="text/plain"),
    lambda: Fault.status(404),
    lambda: Fault.status(400, body={"error": "Request ID is invalid."}),
    lambda: Fault.content_type("application/octet-stream"),
    lambda: Fault.content_type("audio/mpeg; charset=binary"),
]
#: Faults met by SOAK_RUN polls of a job in a row: the network or the status answers fail
#: for longer than the retry attempts, which is still no verdict on the job.
_SOAK_RETRIEVE_RUNS: list[Callable[[], Fault]] = [
    Fault.drop,
    lambda: Fault.delay(SOAK_SLOW),
    _html_502,
]
_SOAK_COMPLETE_FAULTS: list[Callable[[], Fault]] = [
    Fault.drop,
    lambda: Fault.status(429, retry_after=2.0),
    lambda: Fault.status(503),
    _html_502,
]
_SOAK_FINAL_FAILURES = [500, 503, 422, 400]
#: The log labels of the faults each endpoint must have met in a full run.
_SOAK_FAULT_LABELS = {
    "queue": {"drop", f"delay:{SOAK_SLOW:g}", "status:429", "status:503", "status:500"},
    "retrieve": {
        "drop",
        "truncate",
        f"delay:{SOAK_SLOW:g}",
        "status:429",
        "status:500",
        "status:502",
        "status:404",
        "status:400",
        "content_type:application/octet-stream",
    },
    "complete": {"drop", "status:429", "status:503", "status:502"},
}
_SOAK_MODELS = ["elevenlabs-music", "stable-audio-25", "ace-step-15", "mmaudio-v2-text-to-audio"]


async def _soak_round(directory: Path, jobs: int = SOAK_JOBS) -> dict[str, Any]:
    """One soak run; asserts every invariant and returns its figures."""
    rng = random.Random(20260420)
    out = directory / "out"
    out.mkdir(parents=True)

    def script(body: Any) -> JobScript:
        fail = rng.choice(_SOAK_FINAL_FAILURES) if rng.random() < SOAK_RATE else None
        big = "memory" in body["prompt"] and rng.random() < 0.5
        return JobScript(
            duration=rng.uniform(0.5, 8.0),
            fail_status=fail,
            audio_size=SOAK_MEMORY_CAP * 2 if big else None,
            id3=rng.random() < 0.1,
        )

    requests = [
        v.QueueRequest(
            _SOAK_MODELS[i % len(_SOAK_MODELS)],
            f"soak {'memory' if i % 20 == 0 else 'file'} job number {i:04d}",
        )
        for i in range(jobs)
    ]
    outcomes: dict[int, v.Outcome | v.VeniceError] = {}
    tracked: dict[str, tuple[int, v.Job]] = {}
    async with FakeServer(time_scale=TIME_SCALE, api_keys=[API_KEY], job_script=script) as server:
        session = _session(
            server,
            rate_limits=v.RateLimits(
                queue_per_minute=None,
                retrieve_per_minute=None,
                failures_per_window=10_000,
                pooled_per_minute=None,
            ),
            retry=v.RetryPolicy(
                initial_backoff=0.5,
                max_backoff=4.0,
                max_retry_after=5.0,
                unreachable_after=SOAK_UNREACHABLE_AFTER,
            ),
            timeouts=v.Timeouts(read=SOAK_READ_TIMEOUT, status=SOAK_STATUS_TIMEOUT),
            limits=v.Limits(max_audio_bytes_in_memory=SOAK_MEMORY_CAP),
        )

        async def queue_faults() -> None:
            # Spread queue faults over the whole run: after each one, the next comes
            # after a random number of queue requests (geometric, mean 1 / SOAK_RATE).
            target = 0
            while True:
                await anyio.sleep(0.001)
                if server.count("queue") >= target and server.pending_faults("queue") == 0:
                    server.inject("queue", rng.choice(_SOAK_QUEUE_FAULTS)())
                    target = server.count("queue") + int(rng.expovariate(SOAK_RATE))

        async def submit(indices: list[int], destination: Path | None) -> None:
            try:
                got: list[v.Job | None] = list(
                    await session.submit_many(
                        [requests[i] for i in indices], destination=destination
                    )
                )
            except v.BatchSubmitError as error:
                got = error.jobs
                for position, failure in error.errors.items():
                    outcomes[indices[position]] = failure
            for index, job in zip(indices, got, strict=True):
                if job is None:
                    continue
                tracked[job.queue_id] = (index, job)
                # Audio faults only hit an audio answer: inject a little more often.
                if rng.random() < 3 * SOAK_RATE:
                    fault = rng.choice(_SOAK_RETRIEVE_FAULTS)()
                    server.inject("retrieve", fault, queue_id=job.queue_id)
                if rng.random() < SOAK_RATE:
                    fault = rng.choice(_SOAK_RETRIEVE_RUNS)()
                    server.inject("retrieve", fault, times=SOAK_RUN, queue_id=job.queue_id)
                if rng.random() < SOAK_RATE:
                    fault = rng.choice(_SOAK_COMPLETE_FAULTS)()
                    server.inject("complete", fault, queue_id=job.queue_id)

        async with session:
            async with anyio.create_task_group() as faults:
                faults.start_soon(queue_faults)
                async with anyio.create_task_group() as submitters:
                    for start in range(0, jobs, 100):
                        indices = list(range(start, min(start + 100, jobs)))
                        memory = [i for i in indices if i % 20 == 0]
                        submitters.start_soon(submit, [i for i in indices if i % 20], out)
                        submitters.start_soon(submit, memory, None)
                faults.cancel_scope.cancel()
            async with session.results(job for _, job in tracked.values()) as results:
                async for outcome in results:
                    outcomes[tracked[outcome.job.queue_id][0]] = outcome
            assert session.unfinished() == []
            stats = session.statistics()
            assert stats.jobs_in_flight == 0
        figures = _check_soak(server, requests, outcomes, out)
    # Closed: delayed answers are settled too, so every fault met is in the log.
    met = Counter(r.fault for r in server.requests if r.fault)
    for endpoint, kinds in _SOAK_FAULT_LABELS.items():
        log = server.requests_to(endpoint)
        hit = sum(1 for r in log if r.fault)
        figures[f"{endpoint} faults"] = f"{hit}/{len(log)}"
        if jobs == SOAK_JOBS:
            assert hit >= 0.03 * len(log), (endpoint, hit, len(log))
            assert kinds <= set(met), (endpoint, kinds - set(met))
    figures["retrieves_per_job"] = round(stats.retrieves_per_finished_job, 2)
    figures["rate_limited"] = stats.rate_limited
    figures["session"] = weakref.ref(session)
    return figures


def _check_soak(
    server: FakeServer,
    requests: list[v.QueueRequest],
    outcomes: dict[int, v.Outcome | v.VeniceError],
    out: Path,
) -> dict[str, Any]:
    """Every request is accounted for, every file complete, no job queued twice."""
    assert sorted(outcomes) == list(range(len(requests)))
    kinds: Counter[str] = Counter()
    files = set()
    for index, result in outcomes.items():
        if isinstance(result, v.Succeeded):
            audio = result.audio
            expected = server.audio_for(result.job.queue_id)
            if audio.path is not None:
                assert audio.path.parent == out.resolve()
                assert audio.path.read_bytes() == expected
                files.add(audio.path.name)
            else:
                assert audio.data == expected
            assert server.jobs[result.job.queue_id].released  # stored, then released
            kinds["delivered"] += 1
        elif isinstance(result, v.Failed):
            # Only the API's verdict (its JSON error) ends a paid job, or the in-memory cap
            # the soak sets on purpose; never a poll's trouble in transit.
            error = result.error
            if not isinstance(error, v.ResponseTooLarge):
                assert isinstance(error, v.APIStatusError), repr(error)
                assert isinstance(error.body, dict), repr(error)
                assert error.status_code in (400, 404, 422, 500, 503), repr(error)
            kinds[f"failed:{type(error).__name__}"] += 1
        else:
            assert isinstance(result, v.VeniceError)
            assert requests[index].prompt in {r.body["prompt"] for r in server.requests_to("queue")}
            kinds[f"not queued:{type(result).__name__}"] += 1
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # no partial files
    # No request created two jobs, and no queue was repeated after it may have been billed.
    per_prompt = Counter(job.body["prompt"] for job in server.jobs.values())
    assert max(per_prompt.values()) == 1
    sent: dict[str, list[RecordedRequest]] = {}
    for record in server.requests_to("queue"):
        sent.setdefault(record.body["prompt"], []).append(record)
    for records in sent.values():
        for record in records[:-1]:
            assert record.status not in (0, 200), records
            assert not (record.fault or "").startswith("delay"), records
    # Every job the server holds was delivered, failed with its error, or reported unknown.
    tracked = {r.job.queue_id for r in outcomes.values() if isinstance(r, (v.Succeeded, v.Failed))}
    unknown = {r.request.prompt for r in outcomes.values() if isinstance(r, v.QueueOutcomeUnknown)}
    for queue_id, job in server.jobs.items():
        assert queue_id in tracked or job.body["prompt"] in unknown
    return {"outcomes": dict(sorted(kinds.items())), "requests": len(server.requests)}


def _traced_outside_interning() -> int:
    """Bytes traced now, leaving out ``sys.intern``'s table: pathlib interns every path part,
    and that process-wide table doubling during the run (its size set by whatever ran
    before) is cache capacity, not something the run kept."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pathlib.__file__)]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


@pytest.mark.soak
@pytest.mark.timeout(240)  # ~50-70 s on a quiet 2-core machine; more under load
async def test_soak_2000_jobs_under_random_faults(tmp_path: Path) -> None:
    """2,000 jobs, 5% of requests faulty: all accounted for, no duplicates, no leaks."""
    # A short warm-up fills the caches that live for the whole process (imports, aiohttp and
    # yarl caches), so what remains after the measured run is what the run itself kept.
    await _soak_round(tmp_path / "warm-up", jobs=100)
    gc.collect()
    tasks = _tasks()
    tracemalloc.start()
    try:
        baseline = _traced_outside_interning()
        # Counted after the baseline snapshot and before the last: taking one leaves blocks.
        blocks = sys.getallocatedblocks()
        started = time.perf_counter()
        figures = await _soak_round(tmp_path / "soak")
        elapsed = time.perf_counter() - started
        session = figures.pop("session")
        gc.collect()
        grown_blocks = sys.getallocatedblocks() - blocks
        grown = _traced_outside_interning() - baseline
    finally:
        tracemalloc.stop()
    print(f"\nsoak: {elapsed:.1f}s, memory {grown / 1024:+.0f} KiB, {grown_blocks:+d} blocks")
    print(f"soak: {figures}")
    assert session() is None  # nothing keeps the closed session (or its jobs) alive
    assert _tasks() == tasks
    # Back to baseline: what is left is cache capacity (weak sets of tasks keep their
    # high-water size), not something per job: far less than one block per job.
    assert grown < 1024 * 1024
    assert grown_blocks < SOAK_JOBS // 2
