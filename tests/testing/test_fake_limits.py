"""The fake server's rate limits: pooled and per endpoint, stated or not, the lockout, and
``GET /api_keys/rate_limits``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

import aiohttp
import anyio
import pytest
from multidict import CIMultiDict

from venice_audio_async._core.clock import ManualClock
from venice_audio_async.testing import FakeServer, Fault, JobScript, load_default_catalogue
from venice_audio_async.testing.__main__ import _build_server, _parser, main

AUTH = {"Authorization": "Bearer test-key"}
MODEL = "elevenlabs-music"
QUEUE_BODY = {"model": MODEL, "prompt": "Warm strings", "duration_seconds": 30}
QUOTE_BODY = {"model": MODEL, "duration_seconds": 30}
STATED = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)

pytestmark = pytest.mark.anyio


class Reply(NamedTuple):
    status: int
    headers: CIMultiDict[str]
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)

    def states_a_limit(self) -> bool:
        return any(name in self.headers for name in STATED)


@pytest.fixture
def anyio_backend() -> str:
    """Run the async tests on asyncio (aiohttp needs it)."""
    return "asyncio"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


class Api:
    """Raw calls to one fake server."""

    def __init__(self, http: aiohttp.ClientSession, server: FakeServer) -> None:
        self.http = http
        self.server = server

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = AUTH,
    ) -> Reply:
        kwargs: dict[str, Any] = {"headers": dict(headers or {})}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, f"{self.server.url}{path}", **kwargs) as response:
            return Reply(response.status, response.headers.copy(), await response.read())

    async def quote(self) -> Reply:
        return await self.call("POST", "/audio/quote", QUOTE_BODY)

    async def queue(self) -> Reply:
        return await self.call("POST", "/audio/queue", QUEUE_BODY)

    async def retrieve(self, queue_id: str) -> Reply:
        return await self.call("POST", "/audio/retrieve", {"model": MODEL, "queue_id": queue_id})

    async def complete(self, queue_id: str) -> Reply:
        return await self.call("POST", "/audio/complete", {"model": MODEL, "queue_id": queue_id})

    async def models(self) -> Reply:
        return await self.call("GET", "/models?type=music")

    async def key_limits(self, headers: Mapping[str, str] | None = AUTH) -> Reply:
        return await self.call("GET", "/api_keys/rate_limits", headers=headers)


@pytest.fixture
async def serve(http: aiohttp.ClientSession, clock: ManualClock) -> AsyncIterator[Any]:
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


# --- the pooled limit --------------------------------------------------------------------


async def test_pooled_limit_counts_every_audio_endpoint(serve: Any) -> None:
    """quote, queue, retrieve and complete share one window; models is not counted."""
    api = await serve(pooled_rate_limit=4, job_script=JobScript(duration=600))
    queue_id = (await api.queue()).json()["queue_id"]
    assert (await api.quote()).status == 200
    assert (await api.retrieve(queue_id)).status == 200
    assert (await api.complete(queue_id)).status == 200
    assert (await api.models()).status == 200
    assert (await api.key_limits()).status == 200
    for refused in (api.quote(), api.queue(), api.retrieve(queue_id), api.complete(queue_id)):
        reply = await refused
        assert (reply.status, reply.json()) == (429, {"error": "Rate limit exceeded"})
    assert (await api.models()).status == 200
    faults = [r.fault for r in api.server.requests]
    assert faults == [None] * 6 + ["pooled_rate_limit"] * 4 + [None]
    assert len(api.server.jobs) == 1  # the refused queue created no job


async def test_pooled_429_states_no_limit_only_retry_after(serve: Any, clock: ManualClock) -> None:
    """Neither the answers nor the pooled 429 carry x-ratelimit-* headers; Retry-After does."""
    api = await serve(pooled_rate_limit=2)
    first = await api.quote()
    clock.advance(10)
    second = await api.queue()
    limited = await api.quote()
    assert [first.status, second.status, limited.status] == [200, 200, 429]
    for reply in (first, second, limited):
        assert not reply.states_a_limit()
        assert not any(name.lower().startswith("x-ratelimit") for name in reply.headers)
    assert limited.headers["Retry-After"] == "50"
    clock.advance(50)
    assert (await api.quote()).status == 200  # the first request left the window
    assert (await api.quote()).status == 429  # the one at t=10 has not


async def test_pooled_and_per_endpoint_limits_coexist(serve: Any) -> None:
    """A request must pass both; one refused by either uses up neither window."""
    api = await serve(rate_limits={"quote": 2}, pooled_rate_limit=3)
    assert [(await api.quote()).status for _ in range(2)] == [200, 200]
    own = await api.quote()  # the quote limit refuses; the pool still has room
    assert own.status == 429
    assert own.headers["x-ratelimit-limit-requests"] == "2"
    assert own.headers["x-ratelimit-remaining-requests"] == "0"
    assert (await api.queue()).status == 200  # so the refused quote did not use the pool
    pooled = await api.queue()
    assert pooled.status == 429
    assert not pooled.states_a_limit()
    assert [r.fault for r in api.server.requests] == [
        None,
        None,
        "rate_limit",
        None,
        "pooled_rate_limit",
    ]


async def test_pooled_refusal_uses_up_no_endpoint_window(serve: Any, clock: ManualClock) -> None:
    """A quote the pool refuses is not counted by the quote limit."""
    api = await serve(rate_limits={"quote": 2}, pooled_rate_limit=2)
    await api.queue()
    await api.queue()
    clock.advance(10)
    assert (await api.quote()).status == 429
    clock.advance(50)  # the queues leave the pool; the refused quote was never in a window
    reply = await api.quote()
    assert reply.status == 200
    assert reply.headers["x-ratelimit-remaining-requests"] == "1"


async def test_both_limits_refusing_are_both_recorded(serve: Any, clock: ManualClock) -> None:
    """Refused by both: both labels, the endpoint's limit stated, Retry-After the longer wait."""
    api = await serve(rate_limits={"quote": 1}, pooled_rate_limit=2)
    await api.queue()
    clock.advance(10)
    await api.quote()
    clock.advance(20)
    reply = await api.quote()
    assert reply.status == 429
    assert api.server.requests[-1].fault == "rate_limit+pooled_rate_limit"
    assert reply.headers["Retry-After"] == "40"
    assert reply.headers["x-ratelimit-limit-requests"] == "1"


async def test_pooled_limit_validation() -> None:
    """A pooled limit below 1 is refused at construction."""
    with pytest.raises(ValueError, match="pooled_rate_limit"):
        FakeServer(pooled_rate_limit=0)


# --- stating the per-endpoint limits ---------------------------------------------------


async def test_stated_limits_on_answers(serve: Any, clock: ManualClock) -> None:
    """With state_limits on, answers (audio too) state limit, remaining and a ms-epoch reset."""
    api = await serve(rate_limits={"retrieve": 3}, job_script=JobScript(duration=5))
    queue_id = (await api.queue()).json()["queue_id"]
    assert not (await api.queue()).states_a_limit()  # queue has no limit of its own
    running = await api.retrieve(queue_id)
    clock.advance(5)
    audio = await api.retrieve(queue_id)
    assert audio.headers["Content-Type"] == "audio/mpeg"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in (running, audio)] == ["2", "1"]
    assert audio.headers["x-ratelimit-limit-requests"] == "3"
    reset = int(audio.headers["x-ratelimit-reset-requests"])
    assert reset == int((clock.time() + 55) * 1000)  # the first retrieve leaves at +55 s
    assert len(str(reset)) == 13


async def test_state_limits_off_hides_the_endpoint_limits(serve: Any) -> None:
    """state_limits=False: no x-ratelimit-*-requests on answers or on the 429, only Retry-After."""
    api = await serve(rate_limits={"quote": 1}, state_limits=False)
    admitted = await api.quote()
    limited = await api.quote()
    assert (admitted.status, limited.status) == (200, 429)
    assert not admitted.states_a_limit()
    assert not limited.states_a_limit()
    assert limited.headers["Retry-After"] == "60"
    assert api.server.requests[-1].fault == "rate_limit"


async def test_state_limits_off_applies_to_injected_429s(serve: Any) -> None:
    """An injected 429 on an unstating server carries only its Retry-After and own headers."""
    api = await serve(rate_limits={"quote": 5}, state_limits=False)
    api.server.inject("quote", Fault.status(429, retry_after=3))
    api.server.inject("quote", Fault.status(429, headers={"x-ratelimit-limit-requests": "7"}))
    first = await api.quote()
    assert (first.status, first.headers["Retry-After"]) == (429, "3")
    assert not first.states_a_limit()
    second = await api.quote()
    assert second.headers["x-ratelimit-limit-requests"] == "7"  # the test's own header
    assert "x-ratelimit-reset-requests" not in second.headers


# --- the failed-request lockout --------------------------------------------------------


async def test_rate_limit_429s_do_not_feed_the_error_budget_by_default(
    serve: Any, clock: ManualClock
) -> None:
    """Without error_budget_counts_429, pooled 429s never lock the server."""
    api = await serve(pooled_rate_limit=1, error_budget=(2, 30.0))
    statuses = [(await api.quote()).status for _ in range(6)]
    assert statuses == [200] + [429] * 5
    assert "error_budget" not in {r.fault for r in api.server.requests}
    clock.advance(60)
    assert (await api.quote()).status == 200


async def test_counted_429s_lock_the_server(serve: Any, clock: ManualClock) -> None:
    """With error_budget_counts_429, pooled 429s past the budget lock every route for the window."""
    api = await serve(pooled_rate_limit=1, error_budget=(2, 30.0), error_budget_counts_429=True)
    assert (await api.quote()).status == 200
    for _ in range(3):
        assert api.server.requests[-1].fault != "error_budget"
        assert (await api.quote()).status == 429  # the third is one failure too many
    locked = await api.models()
    assert locked.status == 429
    assert locked.json()["error"].startswith("Too many failed attempts (> 2)")
    assert api.server.requests[-1].fault == "error_budget"
    for _ in range(5):  # the lockout's own 429s do not extend it
        await api.models()
    clock.advance(30)
    assert (await api.models()).status == 200
    assert (await api.quote()).status == 429  # the pool still holds the request at t=0
    assert api.server.requests[-1].fault == "pooled_rate_limit"
    clock.advance(30)
    assert (await api.quote()).status == 200


async def test_lockouts_and_retry_after_are_recorded(serve: Any, clock: ManualClock) -> None:
    """Each lockout is listed (start, until); each answer records its Retry-After, if any."""
    api = await serve(pooled_rate_limit=1, error_budget=(1, 30.0), error_budget_counts_429=True)
    assert api.server.lockouts == []
    assert (await api.quote()).status == 200
    clock.advance(5)
    assert (await api.quote()).status == 429
    assert (await api.quote()).status == 429  # the second failure is one too many: locked
    assert [r.retry_after for r in api.server.requests] == [None, 55.0, 55.0]
    clock.advance(10)
    await api.models()  # the lockout's own answer: no new lockout
    assert api.server.lockouts == [(5.0, 35.0)]


async def test_injected_429s_count_when_429s_count(serve: Any) -> None:
    """error_budget_counts_429 also counts injected 429s; other failures count either way."""
    api = await serve(error_budget=(1, 30.0), error_budget_counts_429=True)
    api.server.inject("quote", Fault.status(429), times=2)
    await api.quote()
    await api.quote()
    assert (await api.quote()).status == 429
    assert api.server.requests[-1].fault == "error_budget"


# --- GET /api_keys/rate_limits ---------------------------------------------------------


async def test_key_rate_limits_shape(serve: Any, clock: ManualClock) -> None:
    """The answer has the OpenAPI shape: tier, balance, epoch and limits per model."""
    limits = {MODEL: {"RPM": 60, "RPD": 500}, "stable-audio-25": {"RPM": 120}}
    api = await serve(key_rate_limits=limits, balance_usd=5.0)
    reply = await api.key_limits()
    assert reply.status == 200
    day = 86400
    midnight = (int(clock.time()) // day + 1) * day
    next_epoch = datetime.fromtimestamp(midnight, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert reply.json() == {
        "data": {
            "accessPermitted": True,
            "apiTier": {"id": "paid", "isCharged": True},
            "balances": {"USD": 5.0},
            "keyExpiration": None,
            "nextEpochBegins": next_epoch,
            "rateLimits": [
                {
                    "apiModelId": MODEL,
                    "rateLimits": [{"amount": 60, "type": "RPM"}, {"amount": 500, "type": "RPD"}],
                },
                {"apiModelId": "stable-audio-25", "rateLimits": [{"amount": 120, "type": "RPM"}]},
            ],
        }
    }
    assert not reply.states_a_limit()


async def test_key_rate_limits_default_from_the_pooled_limit(serve: Any) -> None:
    """By default every catalogue model is listed at the pooled RPM, or none without one."""
    pooled = await serve(pooled_rate_limit=60)
    entries = (await pooled.key_limits()).json()["data"]["rateLimits"]
    assert [entry["apiModelId"] for entry in entries] == [
        row["id"] for row in load_default_catalogue()
    ]
    assert {json.dumps(entry["rateLimits"]) for entry in entries} == {
        json.dumps([{"amount": 60, "type": "RPM"}])
    }
    unlimited = await serve(rate_limits={"queue": 40, "retrieve": 120})
    data = (await unlimited.key_limits()).json()["data"]
    assert data["rateLimits"] == []
    assert data["balances"] == {}


async def test_key_rate_limits_is_authenticated_and_recorded(serve: Any) -> None:
    """No or a wrong key: 401 (no x402 discovery); it is logged as key_rate_limits."""
    api = await serve(api_keys=["test-key"], pooled_rate_limit=1)
    missing = await api.key_limits(headers=None)
    assert (missing.status, missing.json()) == (401, {"error": "Authentication failed"})
    assert "PAYMENT-REQUIRED" not in missing.headers
    wrong = await api.key_limits(headers={"Authorization": "Bearer other"})
    assert wrong.status == 401
    assert (await api.quote()).status == 200  # uses the whole pool ...
    assert (await api.key_limits()).status == 200  # ... which this route is not part of
    assert api.server.count("key_rate_limits") == 3
    assert [r.path for r in api.server.requests_to("key_rate_limits")] == [
        "/api/v1/api_keys/rate_limits"
    ] * 3
    assert (await api.call("POST", "/api_keys/rate_limits")).status == 405


async def test_key_rate_limits_takes_faults_and_its_own_limit(serve: Any) -> None:
    """Like every endpoint it accepts injected faults and a per-endpoint rate limit."""
    api = await serve(rate_limits={"key_rate_limits": 1})
    api.server.inject("key_rate_limits", Fault.status(500))
    assert (await api.key_limits()).status == 500
    assert (await api.key_limits()).headers["x-ratelimit-limit-requests"] == "1"
    assert (await api.key_limits()).status == 429


def test_key_rate_limits_validation() -> None:
    """Unknown limit types, non-integer or non-positive amounts and empty ids are refused."""
    with pytest.raises(ValueError, match="type must be one of"):
        FakeServer(key_rate_limits={MODEL: {"RPS": 1}})
    with pytest.raises(ValueError, match="integer >= 1"):
        FakeServer(key_rate_limits={MODEL: {"RPM": 0}})
    with pytest.raises(ValueError, match="integer >= 1"):
        FakeServer(key_rate_limits={MODEL: {"RPM": True}})
    with pytest.raises(ValueError, match="non-empty"):
        FakeServer(key_rate_limits={"": {"RPM": 1}})


async def test_key_rate_limits_on_a_time_scaled_server(http: aiohttp.ClientSession) -> None:
    """A scaled clock's virtual epoch has no calendar date: the next real midnight is given."""
    async with FakeServer(time_scale=0.001) as server:
        reply = await Api(http, server).key_limits()
    text = reply.json()["data"]["nextEpochBegins"]
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.000Z").replace(tzinfo=timezone.utc)
    assert 0 < moment.timestamp() - datetime.now(timezone.utc).timestamp() <= 86400


# --- time scale and command line -------------------------------------------------------


async def test_pooled_window_runs_on_the_time_scale(http: aiohttp.ClientSession) -> None:
    """At time_scale 0.005 the 60 s pooled window frees after 0.3 real seconds."""
    scale = 0.005
    async with FakeServer(time_scale=scale, pooled_rate_limit=3) as server:
        api = Api(http, server)
        assert [(await api.quote()).status for _ in range(3)] == [200, 200, 200]
        limited = await api.quote()
        assert limited.status == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60  # virtual seconds
        free_at = server.requests[0].time + 60
        await anyio.sleep((free_at - server.clock.monotonic()) * scale + 0.01)
        assert (await api.quote()).status == 200


async def test_cli_sets_pooled_limit_and_unstated_limits(http: aiohttp.ClientSession) -> None:
    """--pooled-rate-limit, --no-state-limits and --error-budget configure the server."""
    args = _parser().parse_args(
        [
            "--time-scale",
            "0.001",
            "--pooled-rate-limit",
            "2",
            "--rate-limit",
            "quote=5",
            "--no-state-limits",
            "--error-budget",
            "1:30",
            "--error-budget-counts-429",
        ]
    )
    async with _build_server(args) as server:
        api = Api(http, server)
        data = (await api.key_limits()).json()["data"]
        assert data["rateLimits"][0]["rateLimits"] == [{"amount": 2, "type": "RPM"}]
        replies = [await api.quote() for _ in range(5)]
    assert [r.status for r in replies] == [200, 200, 429, 429, 429]
    assert not any(r.states_a_limit() for r in replies)
    faults = [r.fault for r in server.requests_to("quote")]
    # the second counted 429 is one failure more than the budget of 1: the server locks
    assert faults == [None, None, "pooled_rate_limit", "pooled_rate_limit", "error_budget"]


async def test_cli_lists_no_key_limits(http: aiohttp.ClientSession) -> None:
    """--no-key-limits: the pooled limit is enforced but listed nowhere (a limit stated
    nowhere: neither in headers nor at ``GET /api_keys/rate_limits``)."""
    args = _parser().parse_args(
        ["--time-scale", "0.001", "--pooled-rate-limit", "2", "--no-state-limits",
         "--no-key-limits"]
    )  # fmt: skip
    async with _build_server(args) as server:
        api = Api(http, server)
        data = (await api.key_limits()).json()["data"]
        assert data["rateLimits"] == []
        replies = [await api.quote() for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 429]


def test_cli_refuses_bad_limit_options() -> None:
    """A pooled limit below 1 or a malformed --error-budget is a usage error."""
    for argv in (
        ["--pooled-rate-limit", "0"],
        ["--pooled-rate-limit", "x"],
        ["--error-budget", "20"],
        ["--error-budget", "-1:30"],
        ["--error-budget", "20:0"],
    ):
        with pytest.raises(SystemExit):
            main(argv)
