"""The rate rule is one state machine: ``EndpointRate`` (every budget in this process) and
the Lua of ``RedisBudget`` take the same decisions on the same script of grants, 429s and
stated limits, played on virtual time (issue 21 point 2, issue 22 points 1 and 7)."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest

import venice_audio_async as v
from venice_audio_async._core.config import RateLimit, endpoint_rates, pooled_rate
from venice_audio_async._rate.endpoint_rate import EndpointRate, reached
from venice_audio_async._rate.redis_scripts import RULE_STEP
from venice_audio_async.budget import LocalBudget, RedisBudget, RequestBudget
from venice_audio_async.testing import ScaledClock

from ..redis_server import RedisServer

pytestmark = pytest.mark.anyio

#: Where virtual time 0 lies in the script's microseconds (any large number).
BASE_US = 1_000_000_000_000


@attrs.frozen
class Decision:
    """What one step decided: a grant or not, the wait until the next one, the limit, calm."""

    granted: bool
    wait: float | None  # None: no grant while the limit stands
    limit: int | None
    calm: bool


@attrs.frozen
class Step:
    at: float
    kind: str  # "grant", "429", "state", "reconfigure"
    value: int = 0


def script() -> Iterator[Step]:
    """A minute and a half of one endpoint's life, with every drift the two homes had."""
    # A quiet start: a burst of 20 (a sixth of 120), then paced.
    for k in range(30):
        yield Step(0.1 * k + 0.0137, "grant")
    # A 429, and a further one within window / 12 (5.04 s): one less (the Lua once just
    # returned). Then the window starts at the 429: grants go at once, spaced (calm).
    yield Step(3.5137, "429")
    yield Step(4.0137, "429")
    for k in range(40):
        yield Step(4.2137 + 0.5 * k, "grant")
    # A 429 while calm, past window / 12: a fifth off the limit itself (the window since
    # the last 429 holds few grants).
    yield Step(24.2137, "429")
    for k in range(20):
        yield Step(24.4137 + 0.5 * k, "grant")
    # Recovery every window / 4 (15.125 s; the Lua once did it every window / 4 and the
    # Python once a window): look at the limit between the steps.
    for k in range(12):
        yield Step(34.5 + 2.2 * k + 0.0137, "grant")
    # A stated limit above ours while calm (recovery climbs to it), then below (at once).
    yield Step(61.0137, "state", 150)
    yield Step(62.0137, "grant")
    yield Step(63.0137, "state", 30)
    for k in range(8):
        yield Step(63.5137 + 0.3 * k, "grant")
    # Another 429 while calm: a fifth of the limit itself off.
    yield Step(70.0137, "429")
    # A process with no configured limit shares the key: a learnt limit with no ceiling
    # left (nothing configured, the stated one forgotten) is dropped at the next recovery
    # (the Lua once kept it for good).
    yield Step(71.0137, "reconfigure")
    for k in range(6):
        yield Step(72.0137 + 4.0 * k, "grant")


def pool_script() -> Iterator[Step]:
    """A pool of 60/min (a bare log) shared by queue calls and polls: a poll's grant keeps
    one slot back per queue call waiting (``value``), a queue call's keeps none."""
    # Polls fill the window up to the queue calls' reserve (57 of 60 with 3 waiting) ...
    for k in range(58):
        yield Step(0.2 * k + 0.0137, "grant", 3)
    # ... the queue calls still get the last three; then nobody (the window is full).
    for k in range(4):
        yield Step(12.0137 + 0.1 * k, "grant")
    # A slot frees: a poll with a queue call waiting leaves it; the queue call takes it.
    yield Step(60.6137, "grant", 1)
    yield Step(60.6237, "grant")
    # A reserve as large as the limit still leaves one grant to polls.
    yield Step(130.0137, "grant", 500)
    yield Step(130.0237, "grant", 500)


class PythonRule:
    """The steps on an :class:`EndpointRate`."""

    def __init__(self, configured: int, burst: int | None = None) -> None:
        rate = RateLimit(configured, burst=burst)
        self.rate = EndpointRate("retrieve", rate, explicit=False)

    def play(self, step: Step) -> Decision:
        rate, now = self.rate, step.at
        granted = False
        if step.kind == "grant":
            if reached(rate.rate_ready(now, step.value), now):
                rate.grant(now)
                granted = True
        elif step.kind == "429":
            rate.rate_limited_at(now)
        elif step.kind == "state":
            rate.state_limit(step.value, now)
        elif step.kind == "reconfigure":
            rate.configured, rate.stated, rate.explicit = None, None, False
        ready = rate.rate_ready(now)
        return Decision(granted, None if math.isinf(ready) else ready - now, rate.limit, rate.calm)


class LuaRule:
    """The same steps on the Lua rule in a real Redis (RULE_STEP), one round trip each."""

    def __init__(self, client: object, configured: int, burst: int | None = None) -> None:
        self.client = client
        self.configured = configured
        self.burst = burst
        prefix = uuid.uuid4().hex
        self.keys = [f"{prefix}:ep", f"{prefix}:log"]
        self.count = 0

    async def play(self, step: Step) -> Decision:
        self.count += 1
        if step.kind == "reconfigure":
            self.configured = 0
            await self.client.hdel(self.keys[0], "stated")  # type: ignore[attr-defined]
        kind = "none" if step.kind == "reconfigure" else step.kind
        window_ms = RateLimit(120).window * 1000
        reply = await self.client.eval(  # type: ignore[attr-defined]
            RULE_STEP,
            2,
            *self.keys,
            BASE_US + round(step.at * 1e6),
            -self.configured,
            window_ms,
            0
            if self.configured == 0
            else RateLimit(self.configured, burst=self.burst).effective_burst,
            kind,
            step.value,
            f"g{self.count}",
        )
        granted, wait_us, limit, calm = (int(x) for x in reply)
        return Decision(
            bool(granted), None if wait_us < 0 else wait_us / 1e6, limit or None, bool(calm)
        )


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[object]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_local_and_redis_rules_decide_alike(redis_client: object) -> None:
    """Every step of the script: the same grant, the same wait (to the microsecond), the
    same limit and the same calm, in Python and in Lua."""
    python, lua = PythonRule(120), LuaRule(redis_client, 120)
    decisions: list[Decision] = []
    for step in script():
        here, there = python.play(step), await lua.play(step)
        assert here.granted == there.granted, (step, here, there)
        assert (here.limit, here.calm) == (there.limit, there.calm), (step, here, there)
        if here.wait is None or there.wait is None:
            assert here.wait == there.wait, (step, here, there)
        else:
            assert here.wait == pytest.approx(there.wait, abs=2e-6), (step, here, there)
        decisions.append(here)
    # The script met what it was written for (decisions by step number).
    limit_at = {k: d.limit for k, d in enumerate(decisions)}
    kinds = [step.kind for step in script()]
    first_429 = kinds.index("429")
    assert limit_at[first_429] == 16  # 0.8 x the 20 grants in the window
    assert limit_at[first_429 + 1] == 15  # a further 429 within window / 12: one less
    assert decisions[first_429 + 2].granted  # the window starts at the 429: a grant at once
    assert 27 in limit_at.values()  # recovery: 15 + 12 after a quiet window / 4
    calm_429 = kinds.index("429", first_429 + 2)
    assert (limit_at[calm_429 - 1], limit_at[calm_429]) == (27, 21)  # calm: a fifth off
    raised, lowered = (k for k, kind in enumerate(kinds) if kind == "state")
    assert limit_at[raised] == limit_at[raised - 1] == 45  # calm: recovery climbs to 150
    assert limit_at[lowered] == 30  # lower: at once
    assert decisions[-1].limit is None  # no ceiling: the learnt limit is dropped
    assert not decisions[-1].calm


async def test_queue_calls_come_before_polls_in_the_pool_alike(redis_client: object) -> None:
    """Inside a pooled limit a poll leaves the slots of the queue calls waiting (issue 22
    point 2): the same grants, waits and limits in Python and in Lua, step by step."""
    python, lua = PythonRule(60, burst=60), LuaRule(redis_client, 60, burst=60)
    granted: list[bool] = []
    for step in pool_script():
        here, there = python.play(step), await lua.play(step)
        assert here.granted == there.granted, (step, here, there)
        assert here.limit == there.limit, (step, here, there)
        if here.wait is None or there.wait is None:
            assert here.wait == there.wait, (step, here, there)
        else:
            assert here.wait == pytest.approx(there.wait, abs=2e-6), (step, here, there)
        granted.append(here.granted)
    assert granted[:57] == [True] * 57  # polls stop 3 short
    assert not granted[57]
    assert granted[58:62] == [True, True, True, False]  # the queue calls take the 3
    assert granted[62:64] == [False, True]  # the freed slot: the queue call's
    assert granted[64:] == [True, False]  # one slot always left to polls


async def test_polls_with_queue_calls_waiting_are_paced_at_the_share_left_alike(
    redis_client: object,
) -> None:
    """A paced pool of 60/min (burst 10): a poll with 30 grants kept for queue calls goes no
    closer to the last grant than the 30 a minute left to it (60.5 s / 30), not at the
    pool's own pace (about a second): the same in Python and in Lua."""
    steps = [Step(0.0137 + 0.001 * k, "grant") for k in range(10)]
    steps += [Step(3.0137, "grant"), Step(4.5137, "grant", 30), Step(5.1137, "grant", 30)]
    python, lua = PythonRule(60, burst=10), LuaRule(redis_client, 60, burst=10)
    granted = []
    for step in steps:
        here, there = python.play(step), await lua.play(step)
        assert here.granted == there.granted, (step, here, there)
        granted.append(here.granted)
    assert granted == [True] * 11 + [False, True]


async def test_a_spread_rule_catches_up_on_room_a_quiet_spell_left_alike(
    redis_client: object,
) -> None:
    """Burst 1 (a session's polls) spreads what is left of the window until it frees, with
    no floor: after a quiet spell, 4/min with grants at 0 and 50 s allows the next at
    53.5 s (two free slots over the 10.5 s until the first leaves), not 15.1 s after the
    last (the plain interval). A burst of 2 keeps the floor. The same in Python and Lua."""
    steps = [Step(0.0137, "grant"), Step(50.0137, "grant"), Step(53.6137, "grant")]
    for burst, expected in ((1, [True, True, True]), (2, [True, True, False])):
        python, lua = PythonRule(4, burst=burst), LuaRule(redis_client, 4, burst=burst)
        granted = []
        for step in steps:
            here, there = python.play(step), await lua.play(step)
            assert here == there or (
                (here.granted, here.limit) == (there.granted, there.limit)
                and here.wait == pytest.approx(there.wait, abs=2e-6)
            ), (step, here, there)
            granted.append(here.granted)
        assert granted == expected, burst


# --------------------------------------------------------------------------- 429 kinds


OVERLOADED_TEXT = "The model is currently overloaded. Please try again later."
LOCKOUT_TEXT = (
    "Too many failed attempts (> 20) resulting in a non-success status code. "
    "Please wait 30s and try again."
)


@pytest.fixture(params=["local", "redis"])
async def budget(request: pytest.FixtureRequest) -> AsyncIterator[RequestBudget]:
    """The same limits in a LocalBudget and a RedisBudget (on a fresh namespace)."""
    limits = v.RateLimits(queue_per_minute=40, retrieve_per_minute=120, pooled_per_minute=None)
    clock = CLOCK
    if request.param == "local":
        yield LocalBudget(clock=clock, rates=endpoint_rates(limits), failure_window=(20, 30.0))
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    shared = RedisBudget.from_url(
        server.url, namespace=uuid.uuid4().hex, clock=clock, rate_limits=limits
    )
    yield shared
    await shared.aclose()


async def test_an_overloaded_model_holds_its_queue_calls_only(budget: RequestBudget) -> None:
    """An overloaded model's 429 (told by its message): that model's queue calls wait its
    Retry-After; another model's, and polls, go at once; nothing is paused or lowered."""
    await budget.record_response(
        "queue", 429, {"retry-after": "30"}, message=OVERLOADED_TEXT, model="elevenlabs-music"
    )
    now = _now(budget)
    assert not budget.session_paused()
    assert await budget.acquire("queue", deadline_at=now + 1.0, model="stable-audio-25")
    assert await budget.acquire("retrieve", deadline_at=now + 1.0)
    assert not await budget.acquire("queue", deadline_at=now + 5.0, model="elevenlabs-music")
    window = budget.window("queue")
    assert window is not None
    assert window.limit == 40


async def test_the_error_budgets_429_pauses_the_key_and_lowers_no_rate(
    budget: RequestBudget,
) -> None:
    """ "Too many failed attempts": every request waits (the key is locked out), but the
    rate stays: the refusal says nothing about it."""
    for _ in range(10):
        assert await budget.acquire("retrieve")
    await budget.record_response("retrieve", 429, {"retry-after": "30"}, message=LOCKOUT_TEXT)
    assert budget.session_paused()
    assert budget.statistics().pause_reason == "failed-request budget exhausted"
    window = budget.window("retrieve")
    assert window is not None
    assert window.limit == 120
    assert len(window.grants) == 10  # the window did not restart either


@pytest.mark.parametrize("home", ["local", "redis"])
@pytest.mark.parametrize(
    ("pooled", "expected"), [(None, 120), (45, 45)], ids=["documented", "listed"]
)
async def test_a_stated_limit_raises_only_an_assumed_pool(
    home: str, pooled: int | None, expected: int, request: pytest.FixtureRequest
) -> None:
    """An endpoint states 120 a minute: the documented pool (60, assumed) rises to it; a
    pool the key listed (45) stays, the lowest figure of any model in it. A lower stated
    figure never lowers a pool (the endpoint's own limit holds it)."""
    limits = v.RateLimits() if pooled is None else v.RateLimits(pooled_per_minute=pooled)
    budget: RequestBudget
    if home == "local":
        budget = LocalBudget(clock=CLOCK, rates=endpoint_rates(limits), pool=pooled_rate(limits))
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        budget = RedisBudget.from_url(
            server.url, namespace=uuid.uuid4().hex, clock=CLOCK, rate_limits=limits
        )
    try:
        await budget.acquire("complete")  # a round trip: the window as Redis has it
        await budget.record_response("retrieve", 200, {"x-ratelimit-limit-requests": "120"})
        # The same endpoint states less (another endpoint stating a different figure
        # would refute an assumed pool: see the next test).
        await budget.record_response("retrieve", 200, {"x-ratelimit-limit-requests": "10"})
        await budget.acquire("complete")
        window = budget.window("complete")  # only the pool limits complete
        assert window is not None
        assert window.limit == expected
    finally:
        if isinstance(budget, RedisBudget):
            await budget.aclose()


def _budget_on(home: str, limits: v.RateLimits, request: pytest.FixtureRequest) -> RequestBudget:
    """A LocalBudget, or a RedisBudget on a fresh namespace, under ``limits``."""
    if home == "local":
        return LocalBudget(clock=CLOCK, rates=endpoint_rates(limits), pool=pooled_rate(limits))
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisBudget.from_url(
        server.url, namespace=uuid.uuid4().hex, clock=CLOCK, rate_limits=limits
    )


async def _burst(budget: RequestBudget, n: int) -> int:
    """``n`` calls to ``complete`` (only a pool limits it), each giving up 50 s from the
    first: how many were granted. A pool of 120 (a burst of 60, then paced about a second
    apart) grants about 110; with no pool every one goes at once."""
    granted, until = 0, _now(budget) + 50.0
    for _ in range(n):
        granted += await budget.acquire("complete", deadline_at=until)
    return granted


@pytest.mark.parametrize("home", ["local", "redis"])
@pytest.mark.parametrize(
    ("pooled", "figures", "kept"),
    [
        (None, (40, 120), None),
        (None, (120, 120), 120),
        (45, (40, 120), 45),
    ],
    ids=["assumed-refuted", "assumed-equal-figures", "listed"],
)
async def test_two_different_stated_figures_drop_only_an_assumed_pool(
    home: str,
    pooled: int | None,
    figures: tuple[int, int],
    kept: int | None,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Queue states 40 and retrieve 120: endpoints counting against one pooled window
    would state one figure, so the assumed pool (60) is dropped, for good and (in Redis)
    for every process: each endpoint keeps its own limit, and 130 calls the pool (risen
    to 120) would have refused go at once; one INFO line says so. The same figure twice
    keeps it (risen to it); a pool the key listed or the user gave (45) is never dropped."""
    limits = v.RateLimits() if pooled is None else v.RateLimits(pooled_per_minute=pooled)
    budget = _budget_on(home, limits, request)
    others: list[RequestBudget] = []
    try:
        with caplog.at_level(logging.INFO, logger="venice_audio_async"):
            await budget.acquire("complete")  # a round trip: Redis has the pool
            queue, retrieve = figures
            await budget.record_response("queue", 200, {"x-ratelimit-limit-requests": f"{queue}"})
            await budget.record_response(
                "retrieve", 200, {"x-ratelimit-limit-requests": f"{retrieve}"}
            )
            # Stated again, the other way round: still one line, the pool stays dropped.
            await budget.record_response(
                "retrieve", 200, {"x-ratelimit-limit-requests": f"{queue}"}
            )
            await budget.record_response(
                "retrieve", 200, {"x-ratelimit-limit-requests": f"{retrieve}"}
            )
            if kept is None:
                assert await _burst(budget, 130) == 130
            if home == "redis":  # another process on the same budget, fresh from its start
                shared = budget.namespace if isinstance(budget, RedisBudget) else ""
                server: RedisServer = request.getfixturevalue("redis_server")
                other = RedisBudget.from_url(
                    server.url, namespace=shared, clock=CLOCK, rate_limits=limits
                )
                others.append(other)
                assert await other.acquire("complete")
                if kept is None:
                    assert await _burst(other, 130) == 130
                window = other.window("complete")
                assert (window.limit if window is not None else None) == kept
        refuted = [r.getMessage() for r in caplog.records if "not one pool" in r.getMessage()]
        window = budget.window("complete")
        if kept is None:
            assert window is None
            assert budget.statistics().endpoints["complete"].tokens_available is None
            assert refuted == [
                "the API states 40/min for queue and 120/min for retrieve: separate "
                "limits, not one pool; dropping the assumed 60/min pool"
            ]
        else:
            assert window is not None
            assert window.limit == kept
            assert refuted == []
        if kept is None:  # each endpoint keeps its own limit, the one it stated
            await budget.acquire("queue")
            await budget.acquire("retrieve")
            limits_now = [budget.window(name) for name in ("queue", "retrieve")]
            assert [w.limit if w is not None else None for w in limits_now] == [40, 120]
            if isinstance(budget, LocalBudget):  # for good: the assumed pool is not taken again
                budget.set_pool(pooled_rate(v.RateLimits()))
                assert budget.window("complete") is None
                budget.set_pool(pooled_rate(v.RateLimits(pooled_per_minute=45)))  # a listed one
                listed = budget.window("complete")
                assert listed is not None
                assert listed.limit == 45
    finally:
        for shared_budget in (budget, *others):
            if isinstance(shared_budget, RedisBudget):
                await shared_budget.aclose()


#: Both budgets' clock (Redis keeps real time: no ManualClock there).
CLOCK = ScaledClock(0.01)


def _now(budget: RequestBudget) -> float:
    return CLOCK.monotonic()
