"""Security: the API key stays secret, redirects are not followed, files stay where asked.

* The key appears in no ``repr``/``str`` of a public object, in no exception (message,
  ``args``, attributes, or anything chained to it) and in no log record, at any level, over
  a whole run full of faults.
* A 3xx is never followed (it would carry ``Authorization`` elsewhere); plain ``http://`` is
  refused for anything but loopback unless explicitly allowed.
* Audio is written only inside the chosen directory: names derived from prompts are
  sanitised and nothing the server sends (ids, headers) chooses a path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript, audio_bytes
from venice_audio_async.types import CompleteRequest, QuoteRequest, RetrieveRequest

from ..conftest import API_KEY, TIME_SCALE, UNLIMITED, make_session

pytestmark = pytest.mark.anyio

FAST_RETRY = v.RetryPolicy(initial_backoff=1.0, max_backoff=4.0, attempts=3)


def _session(fake_server: FakeServer | str, **overrides: Any) -> v.AsyncSession:
    """A session with unlimited rates and few, fast retries."""
    return make_session(fake_server, **{"rate_limits": UNLIMITED, "retry": FAST_RETRY, **overrides})


# --------------------------------------------------------------------------- the key


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything chained to it (causes, contexts, wrapped errors)."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, *vars(current).values()]
        if isinstance(current, v.BatchSubmitError):
            linked.extend(current.errors.values())
        pending.extend(e for e in linked if isinstance(e, BaseException))


def _assert_no_key_in_error(error: BaseException) -> None:
    """The key is in no message, argument or attribute of ``error`` or its chain."""
    for item in _chain(error):
        shown = [str(item), repr(item), repr(item.args), *map(repr, vars(item).values())]
        for text in shown:
            assert API_KEY not in text, f"{type(item).__name__} shows the key: {text[:300]}"


async def _garbage_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer anything with bytes that are not HTTP."""
    await reader.read(65536)
    writer.write(b"HTTP/1.1 abc\r\nthis is not http\r\n\r\n")
    await writer.drain()
    writer.close()


async def _run_with_faults(fake_server: FakeServer, tmp_path: Path) -> tuple[list[Any], list[Any]]:
    """A whole run full of faults; returns (public objects, errors) it produced."""
    objects: list[Any] = []
    errors: list[BaseException] = []

    async def expect(awaitable: Any) -> None:
        try:
            objects.append(await awaitable)
        except v.VeniceError as error:
            errors.append(error)

    session = _session(fake_server, output_dir=tmp_path, timeouts=v.Timeouts(read=0.05))
    objects += [session, v.RetryPolicy(), v.Timeouts(), v.Limits(), UNLIMITED]
    fake_server.plan(
        JobScript(duration=1.0, audio_size=100_000),  # cut mid-body once
        JobScript(duration=1.0, fail_status=500),
        JobScript(duration=1.0, fail_status=422),
        JobScript(duration=1.0),  # polls time out, then 502s, then it arrives
        JobScript(duration=100_000.0),  # still running when the session closes
    )
    async with session:
        fake_server.inject("models", Fault.status(503))
        fake_server.inject("quote", Fault.status(429, retry_after=2))
        await expect(session.quote("stable-audio-25", duration_seconds=30))
        jobs = [await session.submit("stable-audio-25", f"a faulty run {i}") for i in range(5)]
        objects += jobs
        fake_server.inject("retrieve", Fault.truncate(), queue_id=jobs[0].queue_id)
        fake_server.inject("retrieve", Fault.delay(200.0), queue_id=jobs[3].queue_id)
        fake_server.inject("retrieve", Fault.status(502, body=b""), queue_id=jobs[3].queue_id)
        fake_server.inject("complete", Fault.drop())
        fake_server.inject("queue", Fault.drop())
        await expect(session.submit("stable-audio-25", "a queue answer lost"))
        fake_server.inject("queue", Fault.status(422))
        await expect(session.submit("stable-audio-25", "a refused prompt here"))
        await expect(session.submit("stable-audio-25", "short", duration_seconds=-1))
        await expect(session.submit("no-such-model", "a prompt for nobody"))
        bogus = session.attach("stable-audio-25", "00000000-0000-4000-8000-000000000000")
        async with session.results([*jobs[:4], bogus]) as results:
            async for outcome in results:
                objects.append(outcome)
                if isinstance(outcome, v.Succeeded):
                    objects.append(outcome.audio)
                else:
                    errors.append(outcome.error)
        await expect(session.wait_for(jobs[4], timeout=5.0))
        objects.append(session.statistics())
        async with session.results([jobs[4]]) as stream:
            objects.append(stream)
    objects.append(session)
    await expect(session.submit("stable-audio-25", "after the session closed"))

    async with v.VeniceClient(api_key=API_KEY, base_url=fake_server.url) as client:
        objects += [client, client.transport]
        fake_server.inject(
            "retrieve", Fault.status(302, headers={"Location": "http://evil.invalid/"})
        )
        await expect(client.retrieve(RetrieveRequest(jobs[0].model, jobs[0].queue_id)))
    async with v.VeniceClient(api_key=API_KEY + "-wrong", base_url=fake_server.url) as client:
        await expect(client.queue(v.QueueRequest("stable-audio-25", "with a wrong key")))
    # An answer that is not HTTP at all (aiohttp keeps the request, headers included).
    garbage = await asyncio.start_server(_garbage_http, "127.0.0.1", 0)
    port = garbage.sockets[0].getsockname()[1]
    async with v.VeniceClient(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/") as client:
        await expect(client.models())
    garbage.close()
    await garbage.wait_closed()
    async with FakeServer(time_scale=TIME_SCALE) as gone:
        closed = gone.url
    async with v.VeniceClient(api_key=API_KEY, base_url=closed) as client:
        await expect(client.models())
    return objects, errors


async def test_key_in_no_repr_str_or_error(fake_server: FakeServer, tmp_path: Path) -> None:
    """No public object and no error of a run full of faults shows the key."""
    objects, errors = await _run_with_faults(fake_server, tmp_path)
    kinds = {type(e).__name__ for e in errors}
    assert {
        "MalformedResponse",
        "ConnectError",
        "AuthenticationError",
        "QueueOutcomeUnknown",
        "ContentPolicyError",
        "InferenceFailedError",
        "InvalidQueueIdError",
        "RequestValidationError",
        "JobDeadlineExceeded",
        "SessionStateError",
        "APIStatusError",
    } <= kinds
    for error in errors:
        _assert_no_key_in_error(error)
    for item in objects:
        assert API_KEY not in repr(item), type(item)
        assert API_KEY not in str(item), type(item)
    # The key did reach the server, so the checks above looked at a real run.
    assert fake_server.requests_to("queue")[0].headers["Authorization"] == f"Bearer {API_KEY}"


async def test_key_in_no_log_record(fake_server: FakeServer, tmp_path: Path) -> None:
    """Every log record of a faulty run, at every level and from every logger, lacks the key."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        _, errors = await _run_with_faults(fake_server, tmp_path)
        logging.getLogger("test").debug("errors: %r", errors)  # as a user might log them
        logging.getLogger("test").error("failed", exc_info=errors[0])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    names = {r.name for r in records}
    assert "venice_audio_async" in names
    assert any(r.levelno == logging.DEBUG for r in records)
    assert any(r.levelno == logging.WARNING for r in records)
    for record in records:
        text = formatter.format(record)  # message, arguments and traceback
        assert API_KEY not in text, text[:300]
        assert API_KEY not in repr(record.args)


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("endpoint", ["models", "quote", "queue", "retrieve", "complete"])
async def test_redirect_is_not_followed(
    fake_server: FakeServer, endpoint: str, status: int
) -> None:
    """A 3xx is an APIStatusError; the Location (another server) receives nothing."""
    async with FakeServer(time_scale=TIME_SCALE) as elsewhere:
        target = f"{elsewhere.url}/audio/{endpoint}"
        async with v.VeniceClient(api_key=API_KEY, base_url=fake_server.url) as client:
            fake_server.plan(JobScript(duration=0.0))
            job = await client.queue(v.QueueRequest("stable-audio-25", "a redirected call"))
            fake_server.inject(endpoint, Fault.status(status, headers={"Location": target}))
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "models": client.models,
                "quote": lambda: client.quote(QuoteRequest("stable-audio-25")),
                "queue": lambda: client.queue(v.QueueRequest("stable-audio-25", "a second call")),
                "retrieve": lambda: client.retrieve(RetrieveRequest(job.model, job.queue_id)),
                "complete": lambda: client.complete(CompleteRequest(job.model, job.queue_id)),
            }
            with pytest.raises(v.APIStatusError) as caught:
                await calls[endpoint]()
        assert elsewhere.requests == []
    assert caught.value.status_code == status
    assert "not followed" in str(caught.value)
    assert fake_server.requests[-1].status == status


async def test_redirect_on_a_poll_is_not_followed(fake_server: FakeServer) -> None:
    """A session meeting a redirect on retrieve sends nothing away: the redirect is no
    verdict of the API on the job, which is polled again where it was queued."""
    fake_server.plan(JobScript(duration=0.0))
    async with FakeServer(time_scale=TIME_SCALE) as elsewhere:
        async with _session(fake_server) as session:
            job = await session.submit("stable-audio-25", "a redirected poll")
            location = {"Location": f"{elsewhere.url}/audio/retrieve"}
            fake_server.inject(
                "retrieve", Fault.status(307, headers=location), queue_id=job.queue_id
            )
            outcome = await session.wait_outcome(job)
        assert elsewhere.requests == []
    assert isinstance(outcome, v.Succeeded)
    assert [r.status for r in fake_server.requests_to("retrieve")] == [307, 200]


# --------------------------------------------------------------------------- plain http

REFUSED = [
    "http://api.venice.ai/api/v1",
    "HTTP://api.venice.ai/api/v1",
    "http://10.0.0.5:8000/api/v1",
    "http://192.168.1.20/api/v1",
    "http://localhost.example.com/api/v1",
    "http://127.0.0.1.nip.io/api/v1",
    "http://[2001:db8::1]:8000/api/v1",
]
LOOPBACK = [
    "http://127.0.0.1:9/api/v1",
    "http://127.8.9.10:9/api/v1",
    "http://localhost:9/api/v1",
    "http://LOCALHOST:9/api/v1",
    "http://[::1]:9/api/v1",
]
NOT_HTTP = ["ftp://api.venice.ai/api/v1", "file:///etc/passwd", "api.venice.ai/api/v1", ""]


@pytest.mark.parametrize("url", REFUSED)
def test_plain_http_to_a_remote_host_is_refused(url: str) -> None:
    """http:// to anything but loopback is refused by client and session, unless allowed."""
    with pytest.raises(ValueError, match="plain http") as caught:
        v.VeniceClient(api_key=API_KEY, base_url=url)
    assert "allow_insecure_http=True" in str(caught.value)
    with pytest.raises(ValueError, match="plain http"):
        v.AsyncSession(api_key=API_KEY, base_url=url)
    v.VeniceClient(api_key=API_KEY, base_url=url, allow_insecure_http=True)
    v.AsyncSession(api_key=API_KEY, base_url=url, allow_insecure_http=True)


@pytest.mark.parametrize("url", LOOPBACK)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    """http:// to a loopback address (a local fake or proxy) needs no opt-in."""
    v.VeniceClient(api_key=API_KEY, base_url=url)
    v.AsyncSession(api_key=API_KEY, base_url=url)


@pytest.mark.parametrize("url", NOT_HTTP)
def test_other_schemes_are_refused(url: str) -> None:
    """Only http(s) base URLs are accepted, even with allow_insecure_http."""
    with pytest.raises(ValueError, match="http"):
        v.VeniceClient(api_key=API_KEY, base_url=url, allow_insecure_http=True)


# --------------------------------------------------------------------------- files

HOSTILE_PROMPTS = [
    "../../../../etc/passwd",
    "/etc/passwd",
    "..",
    "...",
    "a/../../b",
    "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "~/.ssh/authorized_keys",
    ".bashrc",
    "evil\x00name",
    "\u202e\u2066 right-to-left /../ \U0001f608",
    "-rf --no-preserve-root",
    "x" * 500,
]


def _tree(root: Path) -> list[str]:
    """Every path under ``root``, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_names_from_prompts_stay_inside_the_directory(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Hostile prompts become plain, visible file names inside the chosen directory."""
    out = tmp_path / "out"
    out.mkdir()
    fake_server.plan(*[JobScript(duration=0.0) for _ in HOSTILE_PROMPTS])
    async with _session(fake_server, output_dir=out) as session:
        jobs = [await session.submit("mmaudio-v2-text-to-audio", p) for p in HOSTILE_PROMPTS]
        async with session.results(jobs) as results:
            outcomes = [o async for o in results]
    paths = []
    for outcome in outcomes:
        assert isinstance(outcome, v.Succeeded)
        path = outcome.audio.path
        assert path is not None
        assert path.parent == out.resolve()
        assert not path.name.startswith((".", "-"))
        assert "\x00" not in path.name
        assert len(path.name) < 120
        paths.append(path.name)
    assert len(set(paths)) == len(HOSTILE_PROMPTS)  # no two jobs share a file
    assert _tree(tmp_path) == ["out", *sorted(f"out/{name}" for name in paths)]


async def test_server_answers_do_not_choose_the_path(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A hostile queue_id, Content-Disposition or x-venice header cannot move the file."""
    out = tmp_path / "out"
    out.mkdir()
    evil_id = "../../../../../tmp/evil-queue-id"
    fake_server.inject(
        "queue",
        Fault.status(
            200,
            body={"model": "mmaudio-v2-text-to-audio", "queue_id": evil_id, "status": "QUEUED"},
        ),
    )
    hostile_headers = {
        "Content-Disposition": 'attachment; filename="../../../evil.sh"',
        "x-venice-audio-format": "../../../evil",
        "x-venice-model-name": "/etc/cron.d/evil",
    }
    fake_server.inject(
        "retrieve",
        Fault.status(
            200,
            body=audio_bytes("mp3", 4096, seed="evil"),
            content_type="audio/mpeg",
            headers=hostile_headers,
        ),
        queue_id=evil_id,
    )
    async with _session(fake_server, output_dir=out) as session:
        job = await session.submit("mmaudio-v2-text-to-audio", "a perfectly normal prompt")
        assert job.queue_id == evil_id
        audio = await session.wait_for(job)
    assert audio.path is not None
    assert audio.path.parent == out.resolve()
    assert audio.path.suffix == ".mp3"
    assert _tree(tmp_path) == ["out", f"out/{audio.path.name}"]


async def test_missing_output_dir_keeps_every_file(fake_server: FakeServer, tmp_path: Path) -> None:
    """An output_dir that does not exist yet still gets one file per job, inside it."""
    out = tmp_path / "not-yet"
    fake_server.plan(*[JobScript(duration=0.0) for _ in range(3)])
    async with _session(fake_server, output_dir=out) as session:
        jobs = [await session.submit("stable-audio-25", f"one of three {i}") for i in range(3)]
        async with session.results(jobs) as results:
            outcomes = [o async for o in results]
    paths = {o.audio.path for o in outcomes if isinstance(o, v.Succeeded)}
    assert len(paths) == 3
    assert all(p is not None and p.parent == out.resolve() for p in paths)


async def test_unwritable_destination_fails_only_that_job(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A destination that cannot be written fails that job; the session and the rest go on."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    good = tmp_path / "good"
    good.mkdir()
    fake_server.plan(*[JobScript(duration=0.0) for _ in range(3)])
    async with _session(fake_server, output_dir=good) as session:
        jobs = [
            await session.submit("stable-audio-25", "first of three"),
            await session.submit(
                "stable-audio-25", "second of three", destination=blocker / "inside"
            ),
            await session.submit("stable-audio-25", "third of three"),
        ]
        async with session.results(jobs) as results:
            outcomes = {o.job.queue_id: o async for o in results}
    failed = outcomes[jobs[1].queue_id]
    assert isinstance(failed, v.Failed)
    assert isinstance(failed.error.__cause__, NotADirectoryError)
    assert "could not store the audio" in str(failed.error)
    assert fake_server.jobs[jobs[1].queue_id].released is False  # kept for a later download
    for job in (jobs[0], jobs[2]):
        assert isinstance(outcomes[job.queue_id], v.Succeeded)
    assert blocker.read_text() == "not a directory"
    assert len(list(good.iterdir())) == 2
