"""The fake server behaving like the API where clients go wrong: overloaded models, the three
distinct 429s, hostile networks on polls (hangs, drips, drops before and inside a body, for
a window of time), limits stated on some endpoints only, and an outside client spending the
key's window. Every test talks real HTTP to a server on a manual clock (no sleeping)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import anyio
import pytest
from multidict import CIMultiDict

from venice_audio_async._core.clock import ManualClock
from venice_audio_async.testing import FakeServer, Fault, JobScript
from venice_audio_async.testing.__main__ import _build_server, _parser, main, record

AUTH = {"Authorization": "Bearer test-key"}
MODEL = "elevenlabs-music"
OTHER = "stable-audio-25"
PROMPT = "Warm strings over a slow piano line"
OVERLOADED = "The model is currently overloaded. Please try again later."

pytestmark = pytest.mark.anyio


class Reply(NamedTuple):
    status: int
    headers: CIMultiDict[str]
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


@pytest.fixture
def anyio_backend() -> str:
    """Run the async tests on asyncio (aiohttp needs it)."""
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client."""
    async with aiohttp.ClientSession() as client:
        yield client


class Api:
    """Raw calls to one fake server."""

    def __init__(self, http: aiohttp.ClientSession, server: FakeServer) -> None:
        self.http = http
        self.server = server

    async def call(self, method: str, path: str, body: Any = None, **options: Any) -> Reply:
        url = f"{self.server.url}{path}"
        async with self.http.request(method, url, json=body, headers=AUTH, **options) as reply:
            return Reply(reply.status, reply.headers.copy(), await reply.read())

    async def queue(self, model: str = MODEL, **extra: Any) -> Reply:
        return await self.call("POST", "/audio/queue", {"model": model, "prompt": PROMPT, **extra})

    async def quote(self, model: str = MODEL) -> Reply:
        return await self.call("POST", "/audio/quote", {"model": model})

    async def retrieve(self, queue_id: str, model: str = MODEL, **options: Any) -> Reply:
        body = {"model": model, "queue_id": queue_id}
        return await self.call("POST", "/audio/retrieve", body, **options)

    async def models(self) -> Reply:
        return await self.call("GET", "/models?type=music")


Serve = Callable[..., Awaitable[Api]]


@pytest.fixture
async def serve(http: aiohttp.ClientSession, clock: ManualClock) -> AsyncIterator[Serve]:
    """Start FakeServers on the manual clock (options as keywords); all closed at the end."""
    servers: list[FakeServer] = []

    async def start(**options: Any) -> Api:
        server = FakeServer(clock=clock, **options)
        await server.start()
        servers.append(server)
        return Api(http, server)

    yield start
    for server in servers:
        await server.close()


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until ``condition`` holds (a guard, not a timing)."""
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)


# --- overloaded models -------------------------------------------------------------------


async def test_an_overloaded_model_refuses_queue_with_retry_after(
    serve: Serve, clock: ManualClock
) -> None:
    """Its queue calls answer the API's overloaded 429 for the window; nothing else does."""
    api = await serve(job_script=JobScript(duration=600))
    running = (await api.queue()).json()["queue_id"]
    api.server.overload(MODEL, retry_after=30.0, for_seconds=45.0)
    refused = await api.queue()
    assert (refused.status, refused.json()) == (429, {"error": OVERLOADED})  # no "code"
    assert refused.headers["Retry-After"] == "30"
    assert not any(name.lower().startswith("x-ratelimit") for name in refused.headers)
    assert api.server.requests[-1].fault == "overloaded"
    assert len(api.server.jobs) == 1  # neither created nor billed
    assert (await api.queue(OTHER)).status == 200  # other models are served
    assert (await api.retrieve(running)).status == 200  # and its running jobs polled
    assert (await api.quote()).status == 200
    bad = await api.queue(duration_seconds=-1)  # a bad body is still a 400 first
    assert bad.status == 400
    clock.advance(45)
    assert (await api.queue()).status == 200


async def test_overloads_scheduled_recovered_and_for_the_whole_life(
    serve: Serve, clock: ManualClock
) -> None:
    """starting_in delays an overload, recover() ends it, overloaded_models never ends."""
    api = await serve(overloaded_models={OTHER: 12.5})
    api.server.overload(MODEL, starting_in=10, retry_after=5)
    assert (await api.queue()).status == 200
    clock.advance(10)
    assert (await api.queue()).headers["Retry-After"] == "5"
    api.server.recover(MODEL)
    assert (await api.queue()).status == 200
    clock.advance(10_000)
    other = await api.queue(OTHER)
    assert (other.status, other.headers["Retry-After"]) == (429, "13")  # whole seconds, up


def test_overload_validation() -> None:
    """Unknown models and bad times are refused before any request."""
    with pytest.raises(ValueError, match="not in the catalogue"):
        FakeServer(overloaded_models={"no-such-model": 30.0})
    with pytest.raises(ValueError, match="retry_after"):
        FakeServer(overloaded_models={MODEL: -1.0})
    server = FakeServer()
    with pytest.raises(ValueError, match="not in the catalogue"):
        server.overload("no-such-model")
    with pytest.raises(ValueError, match="for_seconds"):
        server.overload(MODEL, for_seconds=0)
    with pytest.raises(ValueError, match="starting_in"):
        server.overload(MODEL, starting_in=-1)


@pytest.mark.parametrize("counts_429", [False, True])
async def test_overloaded_429s_feed_the_error_budget_only_when_429s_count(
    serve: Serve, counts_429: bool
) -> None:
    """error_budget_counts_429 decides, as for every other 429 but the lockout's own."""
    api = await serve(
        error_budget=(2, 30.0), error_budget_counts_429=counts_429, overloaded_models={MODEL: 30}
    )
    statuses = [(await api.queue()).status for _ in range(3)]
    assert statuses == [429, 429, 429]
    locked = await api.models()
    assert (locked.status == 429) is counts_429
    assert (api.server.requests[-1].fault == "error_budget") is counts_429


async def test_the_three_429s_say_which_they_are(serve: Serve) -> None:
    """Rate limit, overloaded model and lockout: distinct texts as the API words them, no code."""
    api = await serve(
        pooled_rate_limit=2,
        overloaded_models={MODEL: 30},
        error_budget=(2, 30.0),
        error_budget_counts_429=True,
    )
    overloaded = await api.queue()  # admitted by the pool, refused by the model
    assert (await api.quote(OTHER)).status == 200
    limited = await api.quote(OTHER)  # the pool is full
    assert (await api.quote(OTHER)).status == 429  # the third counted 429: one too many
    lockout = await api.quote(OTHER)
    bodies = [reply.json() for reply in (overloaded, limited, lockout)]
    assert [reply.status for reply in (overloaded, limited, lockout)] == [429] * 3
    assert bodies[0] == {"error": OVERLOADED}
    assert bodies[1] == {"error": "Rate limit exceeded"}
    assert bodies[2] == {
        "error": "Too many failed attempts (> 2) resulting in a non-success status code. "
        "Please wait 30s and try again."
    }
    assert [r.fault for r in api.server.requests] == [
        "overloaded",
        None,
        "pooled_rate_limit",
        "pooled_rate_limit",
        "error_budget",
    ]
    assert limited.headers["Retry-After"] == "60"  # the pooled 429 says when, like the API
    assert "Retry-After" not in lockout.headers  # the lockout says it in x-ratelimit-resets
    assert lockout.headers["x-ratelimit-remaining"] == "0"


# --- hostile networks on polls -----------------------------------------------------------


async def test_hang_never_answers_and_holds_until_the_client_gives_up(serve: Serve) -> None:
    """A hung poll times the client out; the request is not handled; the next one is served."""
    api = await serve(job_script=JobScript(duration=600))
    queue_id = (await api.queue()).json()["queue_id"]
    api.server.inject("retrieve", Fault.hang())
    with pytest.raises(asyncio.TimeoutError):  # not the builtin on 3.10
        await api.retrieve(queue_id, timeout=aiohttp.ClientTimeout(total=0.05))
    assert api.server.jobs[queue_id].retrieve_count == 0
    assert (await api.retrieve(queue_id)).status == 200
    await api.server.close()  # a hung handler ends with the server
    assert [(r.status, r.fault) for r in api.server.requests_to("retrieve")] == [
        (0, "hang"),
        (200, None),
    ]


async def test_hang_for_a_while_then_close_without_an_answer(
    serve: Serve, clock: ManualClock
) -> None:
    """Fault.hang(seconds) holds the connection that long, then closes it unanswered."""
    api = await serve()
    api.server.inject("quote", Fault.hang(20))
    call = asyncio.ensure_future(api.quote())
    await until(lambda: clock.pending == 1)
    clock.advance(19)
    await asyncio.sleep(0)
    assert not call.done()
    clock.advance(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call
    assert api.server.requests[-1].fault == "hang:20"


async def test_drip_sends_headers_then_the_json_body_a_byte_at_a_time(
    serve: Serve, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """The status and Content-Length come at once; each byte of the body after its share."""
    api = await serve(job_script=JobScript(duration=600))
    queue_id = (await api.queue()).json()["queue_id"]
    api.server.inject("retrieve", Fault.drip(10), queue_id=queue_id)
    body = {"model": MODEL, "queue_id": queue_id}
    async with http.post(f"{api.server.url}/audio/retrieve", json=body, headers=AUTH) as reply:
        assert reply.status == 200
        assert reply.content_type == "application/json"
        size = reply.content_length
        assert size is not None
        assert size > 50
        reading = asyncio.ensure_future(reply.read())
        steps = 0
        while not reading.done():
            await until(lambda: clock.pending == 1 or reading.done())
            if clock.advance_to_next():
                steps += 1
        data = await reading
    assert steps == size  # one sleep per byte
    assert clock.monotonic() == pytest.approx(10.0)
    assert json.loads(data)["status"] == "PROCESSING"
    assert api.server.requests[-1].fault == "drip:10"


async def test_drip_on_a_time_scaled_server(http: aiohttp.ClientSession) -> None:
    """At time_scale 0.001 a 50 s drip spreads the body over at least 50 virtual seconds."""
    async with FakeServer(time_scale=0.001) as server:
        api = Api(http, server)
        server.inject("quote", Fault.drip(50))
        started = server.clock.monotonic()
        reply = await api.quote()
        assert server.clock.monotonic() - started >= 50
    assert reply.status == 200
    assert reply.json()["quote"] > 0


async def test_a_drip_is_cut_short_when_the_server_closes(serve: Serve, clock: ManualClock) -> None:
    """Closing mid-drip closes the connection: the client sees a short body, not a hang."""
    api = await serve()
    api.server.inject("quote", Fault.drip(100))
    call = asyncio.ensure_future(api.quote())
    await until(lambda: clock.pending == 1)
    clock.advance_to_next()  # one byte out
    await until(lambda: clock.pending == 1)
    await api.server.close()
    with pytest.raises(aiohttp.ClientPayloadError):
        await call
    assert [(r.status, r.fault) for r in api.server.requests] == [(200, "drip:100")]


async def test_drip_waits_for_a_json_answer(serve: Serve, clock: ManualClock) -> None:
    """An audio answer does not use up a drip; the next JSON answer does."""
    api = await serve(job_script=JobScript(duration=5))
    queue_id = (await api.queue()).json()["queue_id"]
    clock.advance(5)
    api.server.inject("retrieve", Fault.drip(0))
    audio = await api.retrieve(queue_id)
    assert audio.data == api.server.audio_for(queue_id)
    assert api.server.pending_faults("retrieve") == 1
    missing = await api.retrieve("no-such-id")  # a 400 is a JSON answer too
    assert missing.json() == {"error": "Request ID is invalid."}
    assert api.server.requests[-1].fault == "drip:0"


async def test_drop_on_retrieve_before_headers_and_mid_body(
    serve: Serve, clock: ManualClock
) -> None:
    """drop: no answer at all (running job or audio); drop(mid_body): half a JSON body."""
    api = await serve(job_script=JobScript(duration=5))
    queue_id = (await api.queue()).json()["queue_id"]
    api.server.inject("retrieve", Fault.drop(mid_body=True))
    with pytest.raises(aiohttp.ClientPayloadError):
        await api.retrieve(queue_id)
    api.server.inject("retrieve", Fault.drop())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.retrieve(queue_id)
    clock.advance(5)
    api.server.inject("retrieve", Fault.drop())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.retrieve(queue_id)  # finished: the audio is never started
    job = api.server.jobs[queue_id]
    assert (job.retrieve_count, job.downloads) == (1, 0)
    api.server.inject("retrieve", Fault.drop(mid_body=True))
    assert (await api.retrieve(queue_id)).data == api.server.audio_for(queue_id)
    assert api.server.pending_faults("retrieve") == 1  # for audio, Fault.truncate
    assert [(r.status, r.fault) for r in api.server.requests_to("retrieve")] == [
        (200, "drop:mid_body"),  # the status line went out
        (0, "drop"),
        (0, "drop"),
        (200, None),
    ]


async def test_a_jobs_polls_fail_for_a_window_of_time(serve: Serve, clock: ManualClock) -> None:
    """during=(start, end) with times=None: every poll of that job in the window misbehaves."""
    api = await serve(job_script=JobScript(duration=600))
    first = (await api.queue()).json()["queue_id"]
    second = (await api.queue()).json()["queue_id"]
    api.server.inject("retrieve", Fault.drop(), times=None, queue_id=first, during=(10, 40))
    api.server.inject("retrieve", Fault.status(503), times=1, during=(20, 30))
    assert (await api.retrieve(first)).status == 200  # before the window
    assert api.server.pending_faults("retrieve") == 2
    clock.advance(10)
    for _ in range(3):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api.retrieve(first)
    assert (await api.retrieve(second)).status == 200  # another job is not affected
    clock.advance(10)
    assert (await api.retrieve(second)).status == 503  # a counted fault in its own window
    assert (await api.retrieve(second)).status == 200
    clock.advance(20)
    assert (await api.retrieve(first)).status == 200  # the window is over
    assert api.server.pending_faults() == 0


def test_fault_window_validation() -> None:
    """No count needs a window; a window must start at or after now and end after it starts."""
    server = FakeServer()
    with pytest.raises(ValueError, match="during"):
        server.inject("retrieve", Fault.drop(), times=None)
    with pytest.raises(ValueError, match="during"):
        server.inject("retrieve", Fault.drop(), during=(5, 5))
    with pytest.raises(ValueError, match="during"):
        server.inject("retrieve", Fault.drop(), during=(-1, 5))
    with pytest.raises(ValueError, match="hang"):
        Fault.hang(-1)
    with pytest.raises(ValueError, match="drip"):
        Fault.drip(float("nan"))


# --- stating limits on some endpoints only -----------------------------------------------


async def test_limits_stated_on_chosen_endpoints_only(serve: Serve) -> None:
    """state_limits={"queue"}: queue answers state its limit, retrieve's stay silent."""
    api = await serve(
        rate_limits={"queue": 2, "retrieve": 1},
        state_limits={"queue"},
        job_script=JobScript(duration=600),
    )
    queued = await api.queue()
    assert queued.headers["x-ratelimit-limit-requests"] == "2"
    queue_id = queued.json()["queue_id"]
    polled = await api.retrieve(queue_id)
    limited = await api.retrieve(queue_id)
    assert (polled.status, limited.status) == (200, 429)
    for reply in (polled, limited):
        assert not any(name.lower().startswith("x-ratelimit") for name in reply.headers)
    assert limited.headers["Retry-After"] == "60"
    api.server.inject("retrieve", Fault.status(429))
    assert "x-ratelimit-reset-requests" not in (await api.retrieve(queue_id)).headers


def test_state_limits_validation() -> None:
    """Unknown endpoint names (or one bare string) are refused."""
    with pytest.raises(ValueError, match="state_limits"):
        FakeServer(state_limits={"bogus"})
    with pytest.raises(ValueError, match="state_limits"):
        FakeServer(state_limits="queue")


# --- an outside client on the same key ---------------------------------------------------


async def test_spend_fills_the_windows_from_outside(serve: Serve) -> None:
    """spend() uses the pooled and the endpoint's windows; its requests are not recorded."""
    api = await serve(pooled_rate_limit=4, rate_limits={"retrieve": 2})
    assert api.server.spend("retrieve", 3) == 2  # its own limit refuses the third
    assert (await api.quote()).status == 200
    assert (await api.quote()).status == 200
    limited = await api.quote()
    assert (limited.status, limited.json()) == (429, {"error": "Rate limit exceeded"})
    assert api.server.spend("quote", 1) == 0
    assert api.server.outside_spent == {
        "retrieve": {"admitted": 2, "refused": 1},
        "quote": {"admitted": 0, "refused": 1},
    }
    assert api.server.count("retrieve") == 0
    assert len(api.server.requests) == 3


async def test_refused_outside_requests_can_lock_the_key(serve: Serve) -> None:
    """With 429s counted, an outside client's refusals spend the key's error budget too."""
    api = await serve(pooled_rate_limit=1, error_budget=(1, 30.0), error_budget_counts_429=True)
    assert api.server.spend("queue", 3) == 1
    locked = await api.models()
    assert locked.status == 429
    assert api.server.requests[-1].fault == "error_budget"
    assert api.server.spend("queue") == 0  # locked out as well


async def test_outside_load_spends_half_the_window(serve: Serve, clock: ManualClock) -> None:
    """outside_load={"retrieve": 2} on a pooled 4/min leaves the client 2 per minute."""
    api = await serve(pooled_rate_limit=4, outside_load={"retrieve": 2})
    spent = api.server.outside_spent
    for expected in (1, 2):
        await until(lambda: clock.pending == 1)
        clock.advance(30)
        await until(lambda: spent.get("retrieve", {}).get("admitted") == expected)  # noqa: B023
    assert [(await api.quote()).status for _ in range(3)] == [200, 200, 429]
    assert spent == {"retrieve": {"admitted": 2, "refused": 0}}


def test_outside_load_and_spend_validation() -> None:
    """Unknown endpoints, rates not above 0 and negative counts are refused."""
    with pytest.raises(ValueError, match="outside_load"):
        FakeServer(outside_load={"bogus": 1})
    with pytest.raises(ValueError, match="outside_load"):
        FakeServer(outside_load={"retrieve": 0})
    server = FakeServer()
    with pytest.raises(ValueError, match="endpoint"):
        server.spend("bogus")
    with pytest.raises(ValueError, match="count"):
        server.spend("queue", -1)


# --- command line ------------------------------------------------------------------------


async def test_cli_overload_outside_load_and_stated_endpoints(
    http: aiohttp.ClientSession,
) -> None:
    """--overload, --outside-load and --state-limits-on configure the server; record() tells."""
    args = _parser().parse_args(
        [
            "--overload",
            f"{MODEL}=20",
            "--overload",
            f"{OTHER}@0-1000000",
            "--outside-load",
            "quote=6",
            "--rate-limit",
            "queue=5",
            "--rate-limit",
            "quote=5",
            "--state-limits-on",
            "quote",
        ]
    )
    async with _build_server(args) as server:
        api = Api(http, server)
        refused = await api.queue()
        other = await api.queue(OTHER)
        quoted = await api.quote()
        server.spend("quote", 2)
    assert [(r.status, r.headers.get("Retry-After")) for r in (refused, other)] == [
        (429, "20"),
        (429, "30"),
    ]
    assert "x-ratelimit-limit-requests" not in refused.headers  # queue's limit unstated
    assert quoted.headers["x-ratelimit-limit-requests"] == "5"
    data = record(server)
    assert data["outside"] == {"quote": {"admitted": 2, "refused": 0}}
    assert [r["fault"] for r in data["requests"]] == ["overloaded", "overloaded", None]


def test_cli_refuses_bad_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed --overload / --outside-load / --state-limits-on values are usage errors."""
    for argv in (
        ["--overload", ""],
        ["--overload", f"{MODEL}=x"],
        ["--overload", f"{MODEL}@5"],
        ["--overload", f"{MODEL}@9-3"],
        ["--outside-load", "retrieve=0"],
        ["--outside-load", "bogus=3"],
        ["--state-limits-on", "bogus"],
    ):
        with pytest.raises(SystemExit):
            main(argv)
    assert main(["--overload", "no-such-model"]) == 2
    assert main(["--no-state-limits", "--state-limits-on", "queue"]) == 2
    assert "exclude each other" in capsys.readouterr().err
