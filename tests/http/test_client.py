"""The low-level client against the FakeServer: every endpoint, branching and failures."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript
from venice_audio_async.types import (
    CompleteRequest,
    FileSink,
    MemorySink,
    Processing,
    QuoteRequest,
    RetrieveRequest,
)

from ..conftest import API_KEY, TIME_SCALE, make_client

pytestmark = pytest.mark.anyio


async def _finished_job(server: FakeServer, client: v.VeniceClient, **script: object) -> v.Job:
    server.plan(JobScript(duration=0.0, **script))  # type: ignore[arg-type]
    return await client.queue(v.QueueRequest(model="elevenlabs-music", prompt="a calm piano"))


async def test_full_lifecycle(fake_server: FakeServer) -> None:
    """models -> quote -> queue -> retrieve (running) -> retrieve (audio) -> complete -> 404."""
    async with make_client(fake_server) as client:
        models = {m.id: m for m in await client.models()}
        assert "elevenlabs-music" in models
        quote = await client.quote(QuoteRequest(model="elevenlabs-music", duration_seconds=60))
        assert quote.quote == pytest.approx(0.87)

        fake_server.plan(JobScript(duration=30.0, average_execution_time=40.0))
        request = v.QueueRequest(
            model="elevenlabs-music", prompt="warm strings", duration_seconds=30
        )
        job = await client.queue(request)
        assert job.model == "elevenlabs-music"
        assert job.request is request
        assert len(job.queue_id) == 36

        status = await client.retrieve(RetrieveRequest(model=job.model, queue_id=job.queue_id))
        assert isinstance(status, Processing)
        assert status.average_execution_time == pytest.approx(40.0)
        assert status.execution_duration is not None
        assert 0 <= status.execution_duration < 30

        assert not (await client.complete(CompleteRequest(job.model, job.queue_id))).success

        await fake_server.clock.sleep(31)
        audio = await client.retrieve(RetrieveRequest(model=job.model, queue_id=job.queue_id))
        assert isinstance(audio, v.AudioResult)
        assert audio.content_type == "audio/mpeg"
        assert audio.format == "mp3"
        assert audio.data is not None
        assert audio.size == len(audio.data) > 0
        assert audio.venice.model_id == "elevenlabs-music"
        assert audio.venice.inference_time == pytest.approx(30.0, rel=0.01)
        assert audio.data == fake_server.audio_for(job.queue_id)

        assert (await client.complete(CompleteRequest(job.model, job.queue_id))).success
        assert (await client.complete(CompleteRequest(job.model, job.queue_id))).success
        with pytest.raises(v.MediaNotFoundError) as caught:
            await client.retrieve(RetrieveRequest(model=job.model, queue_id=job.queue_id))
        assert caught.value.status_code == 404


async def test_request_bodies_omit_unset_fields(fake_server: FakeServer) -> None:
    """What the server receives has no null or unset keys."""
    async with make_client(fake_server) as client:
        await client.queue(v.QueueRequest(model="stable-audio-25", prompt="rain on a tin roof"))
    (recorded,) = [r for r in fake_server.requests if r.endpoint == "queue"]
    assert recorded.body == {"model": "stable-audio-25", "prompt": "rain on a tin roof"}
    assert recorded.headers["Authorization"] == f"Bearer {API_KEY}"
    assert recorded.headers["User-Agent"].startswith("venice-audio-async/")


@pytest.mark.parametrize(
    ("model", "content_type", "fmt"),
    [
        ("elevenlabs-music", "audio/mpeg", "mp3"),
        ("stable-audio-25", "audio/wav", "wav"),
        ("ace-step-15", "audio/flac", "flac"),
    ],
)
async def test_retrieve_branches_on_content_type(
    fake_server: FakeServer, model: str, content_type: str, fmt: str
) -> None:
    """Each model's audio type is recognised from the response media type."""
    async with make_client(fake_server) as client:
        fake_server.plan(JobScript(duration=0.0))
        job = await client.queue(v.QueueRequest(model=model, prompt="a short test tune"))
        audio = await client.retrieve(RetrieveRequest(job.model, job.queue_id))
    assert isinstance(audio, v.AudioResult)
    assert (audio.content_type, audio.format) == (content_type, fmt)


@pytest.mark.parametrize(
    ("model", "fmt"),
    [("elevenlabs-music", "mp3"), ("stable-audio-25", "wav"), ("ace-step-15", "flac")],
)
async def test_octet_stream_is_sniffed(fake_server: FakeServer, model: str, fmt: str) -> None:
    """application/octet-stream audio is recognised by its magic bytes."""
    async with make_client(fake_server) as client:
        fake_server.plan(JobScript(duration=0.0))
        job = await client.queue(v.QueueRequest(model=model, prompt="a short test tune"))
        fake_server.inject("retrieve", Fault.content_type("application/octet-stream"))
        audio = await client.retrieve(RetrieveRequest(job.model, job.queue_id))
    assert isinstance(audio, v.AudioResult)
    assert audio.format == fmt
    assert audio.data == fake_server.audio_for(job.queue_id)


async def test_content_type_parameters_are_ignored(fake_server: FakeServer) -> None:
    """audio/mpeg; charset=binary is still mp3."""
    async with make_client(fake_server) as client:
        job = await _finished_job(fake_server, client)
        fake_server.inject("retrieve", Fault.content_type("audio/mpeg; charset=binary"))
        audio = await client.retrieve(RetrieveRequest(job.model, job.queue_id))
    assert isinstance(audio, v.AudioResult)
    assert audio.format == "mp3"


async def test_mislabelled_audio_is_sniffed(fake_server: FakeServer) -> None:
    """Real audio bytes under a wrong label are recognised by their magic bytes."""
    async with make_client(fake_server) as client:
        fake_server.plan(JobScript(duration=0.0))
        job = await client.queue(v.QueueRequest(model="stable-audio-25", prompt="a short tune"))
        fake_server.inject("retrieve", Fault.content_type("audio/mpeg"))
        audio = await client.retrieve(RetrieveRequest(job.model, job.queue_id))
    assert isinstance(audio, v.AudioResult)
    assert audio.format == "wav"


async def test_unknown_content_type_is_malformed(fake_server: FakeServer) -> None:
    """A 200 that is neither JSON nor audio is a MalformedResponse, not a crash."""
    async with make_client(fake_server) as client:
        job = await _finished_job(fake_server, client)
        fake_server.inject(
            "retrieve", Fault.status(200, body="<html>hello</html>", content_type="text/html")
        )
        with pytest.raises(v.MalformedResponse):
            await client.retrieve(RetrieveRequest(job.model, job.queue_id))


async def test_download_to_file(fake_server: FakeServer, tmp_path: Path) -> None:
    """A large body streams into the target file, complete."""
    async with make_client(fake_server) as client:
        job = await _finished_job(fake_server, client, audio_size=3_000_000)
        target = tmp_path / "song.mp3"
        audio = await client.retrieve(
            RetrieveRequest(job.model, job.queue_id), sink=FileSink(target)
        )
    assert isinstance(audio, v.AudioResult)
    assert audio.path == target
    assert audio.data is None
    assert audio.size == 3_000_000 == target.stat().st_size
    assert target.read_bytes() == fake_server.audio_for(job.queue_id)
    assert [p.name for p in tmp_path.iterdir()] == ["song.mp3"]


async def test_truncated_download_leaves_no_file(fake_server: FakeServer, tmp_path: Path) -> None:
    """A body cut short raises TruncatedResponse and leaves the directory empty."""
    async with make_client(fake_server) as client:
        job = await _finished_job(fake_server, client, audio_size=500_000)
        fake_server.inject("retrieve", Fault.truncate())
        with pytest.raises(v.TruncatedResponse):
            await client.retrieve(RetrieveRequest(job.model, job.queue_id), sink=FileSink(tmp_path))
        assert list(tmp_path.iterdir()) == []
        # The media is still there: a second try succeeds.
        audio = await client.retrieve(
            RetrieveRequest(job.model, job.queue_id), sink=FileSink(tmp_path)
        )
    assert isinstance(audio, v.AudioResult)
    assert audio.path is not None
    assert audio.path.read_bytes() == fake_server.audio_for(job.queue_id)


async def test_memory_cap(fake_server: FakeServer) -> None:
    """An audio body above the in-memory cap raises ResponseTooLarge."""
    async with make_client(fake_server, limits=v.Limits(max_audio_bytes_in_memory=1000)) as client:
        job = await _finished_job(fake_server, client, audio_size=5000)
        with pytest.raises(v.ResponseTooLarge):
            await client.retrieve(RetrieveRequest(job.model, job.queue_id))


async def test_borrowed_session_is_left_open(fake_server: FakeServer) -> None:
    """A caller's aiohttp session is used and never closed by us."""
    async with aiohttp.ClientSession() as http:
        async with make_client(fake_server, http_session=http) as client:
            assert await client.models()
        assert not http.closed
        async with http.get(f"{fake_server.url}/models?type=music") as response:
            assert response.status == 200


async def test_own_session_is_closed(fake_server: FakeServer) -> None:
    """After aclose the client refuses to send, with the library's SessionStateError."""
    client = make_client(fake_server)
    assert client.base_url == fake_server.url.rstrip("/")
    await client.models()
    await client.aclose()
    await client.aclose()
    with pytest.raises(v.SessionStateError, match="closed"):
        await client.models()
    assert fake_server.count("models") == 1


@pytest.mark.parametrize(
    ("script", "cls"),
    [
        (
            JobScript(duration=0.0, fail_status=422, suggested_prompt="gentle rain"),
            v.ContentPolicyError,
        ),
        (JobScript(duration=0.0, fail_status=500), v.InferenceFailedError),
        (JobScript(duration=0.0, fail_status=503), v.ServiceUnavailableError),
        (JobScript(duration=0.0, fail_status=400), v.BadRequestError),
    ],
)
async def test_failed_jobs_raise_typed_errors(
    fake_server: FakeServer, script: JobScript, cls: type[v.APIStatusError]
) -> None:
    """A job's failure is an HTTP error on retrieve, mapped to its class."""
    async with make_client(fake_server) as client:
        fake_server.plan(script)
        job = await client.queue(v.QueueRequest(model="elevenlabs-music", prompt="stormy weather"))
        with pytest.raises(cls) as caught:
            await client.retrieve(RetrieveRequest(job.model, job.queue_id))
    if isinstance(caught.value, v.ContentPolicyError):
        assert caught.value.suggested_prompt == "gentle rain"
    assert caught.value.headers.get("x-venice-version")


async def test_never_issued_id(fake_server: FakeServer) -> None:
    """An unknown queue_id is InvalidQueueIdError on retrieve and complete."""
    async with make_client(fake_server) as client:
        bogus = "00000000-0000-4000-8000-000000000000"
        with pytest.raises(v.InvalidQueueIdError):
            await client.retrieve(RetrieveRequest("elevenlabs-music", bogus))
        with pytest.raises(v.InvalidQueueIdError):
            await client.complete(CompleteRequest("elevenlabs-music", bogus))


async def test_delete_media_on_completion(fake_server: FakeServer) -> None:
    """With delete_media_on_completion the first audio answer is the last."""
    async with make_client(fake_server) as client:
        job = await _finished_job(fake_server, client)
        request = RetrieveRequest(job.model, job.queue_id, delete_media_on_completion=True)
        assert isinstance(await client.retrieve(request), v.AudioResult)
        with pytest.raises(v.MediaNotFoundError):
            await client.retrieve(request)


async def test_server_validation_error_details(fake_server: FakeServer) -> None:
    """A request the server refuses gives BadRequestError with its details."""
    async with make_client(fake_server) as client:
        with pytest.raises(v.BadRequestError) as caught:
            await client.queue(
                v.QueueRequest(model="stable-audio-25", prompt="rain", force_instrumental=False)
            )
    assert caught.value.issues or caught.value.details


async def test_missing_key_is_payment_required(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials on a credentialed route is a 402, as the real API does."""
    monkeypatch.delenv("VENICE_API_KEY", raising=False)
    async with v.VeniceClient(base_url=fake_server.url) as client:
        with pytest.raises(v.PaymentRequiredError):
            await client.queue(v.QueueRequest(model="elevenlabs-music", prompt="a calm piano"))
    async with v.VeniceClient(api_key="wrong", base_url=fake_server.url) as client:
        with pytest.raises(v.AuthenticationError):
            await client.queue(v.QueueRequest(model="elevenlabs-music", prompt="a calm piano"))


async def test_api_key_from_environment(
    fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VENICE_API_KEY is used when no key is passed, and never shown by repr."""
    monkeypatch.setenv("VENICE_API_KEY", API_KEY)
    async with v.VeniceClient(base_url=fake_server.url) as client:
        assert API_KEY not in repr(client)
        assert API_KEY not in repr(client.transport)
        await client.queue(v.QueueRequest(model="elevenlabs-music", prompt="a calm piano"))


async def test_connect_refused_is_connect_error() -> None:
    """A closed port is a ConnectError that says nothing was sent."""
    async with FakeServer(time_scale=TIME_SCALE) as server:
        url = server.url
    async with v.VeniceClient(api_key=API_KEY, base_url=url) as client:
        with pytest.raises(v.ConnectError) as caught:
            await client.models()
    assert caught.value.request_sent is False
    assert API_KEY not in str(caught.value)


async def test_dropped_connection(fake_server: FakeServer) -> None:
    """A connection dropped before the answer is ConnectionDropped (request sent)."""
    async with make_client(fake_server) as client:
        fake_server.inject("queue", Fault.drop())
        with pytest.raises(v.TransportError) as caught:
            await client.queue(v.QueueRequest(model="elevenlabs-music", prompt="a calm piano"))
    assert caught.value.request_sent


async def test_read_timeout(fake_server: FakeServer) -> None:
    """A server slower than the read timeout is a RequestTimeout (a TimeoutError)."""
    async with make_client(fake_server, timeouts=v.Timeouts(read=0.05)) as client:
        fake_server.inject("models", Fault.delay(1000.0))  # 1000 virtual s = 1 real s
        with pytest.raises(TimeoutError):
            await client.models()


async def test_html_502(fake_server: FakeServer) -> None:
    """A proxy's HTML 502 is a ServerError with the status, not a JSON crash."""
    async with make_client(fake_server) as client:
        fake_server.inject(
            "models", Fault.status(502, body="<html>Bad gateway</html>", content_type="text/html")
        )
        with pytest.raises(v.ServerError) as caught:
            await client.models()
    assert caught.value.status_code == 502


async def test_rate_limit_error_has_retry_after(fake_server: FakeServer) -> None:
    """An injected 429 carries its Retry-After."""
    async with make_client(fake_server) as client:
        fake_server.inject("quote", Fault.status(429, retry_after=3))
        with pytest.raises(v.RateLimitError) as caught:
            await client.quote(QuoteRequest(model="minimax-music-v2"))
    assert caught.value.retry_after == 3


def test_plain_http_to_remote_host_is_refused() -> None:
    """http:// to a non-loopback host is refused unless explicitly allowed."""
    with pytest.raises(ValueError, match="plain http"):
        v.VeniceClient(api_key="k", base_url="http://api.example.com/api/v1")
    v.VeniceClient(api_key="k", base_url="http://api.example.com/api/v1", allow_insecure_http=True)
    v.VeniceClient(api_key="k", base_url="http://localhost:9/api/v1")
    with pytest.raises(ValueError, match="http"):
        v.VeniceClient(api_key="k", base_url="ftp://example.com")


class _BrokenSink(MemorySink):
    """A custom sink with a bug."""

    async def write(self, chunk: bytes) -> None:
        raise RuntimeError("sink bug")


async def test_a_failing_sink_is_an_audio_storage_error(fake_server: FakeServer) -> None:
    """Whatever a sink raises becomes AudioStorageError (its cause kept)."""
    async with make_client(fake_server) as client:
        job = await _finished_job(fake_server, client)
        with pytest.raises(v.AudioStorageError) as caught:
            await client.retrieve(RetrieveRequest(job.model, job.queue_id), sink=_BrokenSink(10**6))
    assert isinstance(caught.value.__cause__, RuntimeError)
