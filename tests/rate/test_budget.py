"""Request budgets: rate limits, pauses and the failure window, in virtual time."""

from __future__ import annotations

import email.utils
import inspect
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from venice_audio_async._core.clock import ManualClock, ScaledClock
from venice_audio_async._core.config import RateLimit, RateLimits, pooled_rate
from venice_audio_async._http.headers import parse_reset, retry_delay_from_headers
from venice_audio_async._rate.budget import (
    BudgetStatistics,
    LocalBudget,
    RateWindow,
    RequestBudget,
    ResponseRecorder,
    RunTime,
)
from venice_audio_async._rate.lessons import teaches_nothing
from venice_audio_async._rate.statistics import EndpointFigures, budget_statistics
from venice_audio_async.testing import FakeServer, JobScript

from ..conftest import TIME_SCALE, busiest_window, make_session, max_in_window

NOW_EPOCH = 1_800_000_000.0


def make_budget(
    clock: ManualClock, rates: dict[str, RateLimit] | None = None, **kwargs: object
) -> LocalBudget:
    if rates is None:
        rates = {"queue": RateLimit(40), "retrieve": RateLimit(120)}
    return LocalBudget(clock=clock, rates=rates, **kwargs)  # type: ignore[arg-type]


async def settle(clock: ManualClock, budget: LocalBudget) -> None:
    """Run the event loop until no task makes visible progress."""
    idle, last = 0, None
    while idle < 5:
        await anyio.lowlevel.checkpoint()
        stats = budget.statistics()
        snapshot = (
            stats.granted,
            clock.pending,
            tuple(e.waiting for e in stats.endpoints.values()),
        )
        idle = idle + 1 if snapshot == last else 0
        last = snapshot


def ms_epoch(clock: ManualClock, seconds_from_now: float) -> str:
    return str(round((clock.time() + seconds_from_now) * 1000))


# --------------------------------------------------------------------------- rate limits


@pytest.mark.anyio
@pytest.mark.parametrize("per_minute", [40, 120])
@pytest.mark.parametrize("burst", [None, 1, "limit"])
async def test_burst_of_500_never_exceeds_the_limit_in_any_minute(
    per_minute: int, burst: int | str | None
) -> None:
    """500 concurrent acquirers get at most per_minute grants in any 60 s, in FIFO order."""
    clock = ManualClock()
    chosen = per_minute if burst == "limit" else burst
    assert not isinstance(chosen, str)
    budget = make_budget(clock, {"retrieve": RateLimit(per_minute, chosen)})
    grants: list[tuple[float, int]] = []

    async def worker(i: int) -> None:
        await budget.acquire("retrieve")
        grants.append((clock.monotonic(), i))

    async with anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(worker, i)
        while True:
            await settle(clock, budget)
            if len(grants) == 500:
                break
            assert clock.advance_to_next()

    times = [t for t, _ in grants]
    assert max_in_window(times, 60.0) <= per_minute
    assert [i for _, i in grants] == list(range(500))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if burst is None:
        # pacing: no stall while the window refills
        assert max(gaps) < 2.0
    # the long-run rate is close to the limit (per 60.5 s window)
    assert times[-1] <= 500 * 60.5 / per_minute * 1.02
    assert budget.statistics().endpoints["retrieve"].granted == 500


@pytest.mark.anyio
async def test_default_burst_then_paced() -> None:
    """A quiet endpoint grants its burst at once, then paces the rest."""
    clock = ManualClock()
    budget = make_budget(clock, {"retrieve": RateLimit(120)})
    assert RateLimit(120).effective_burst == 20
    assert RateLimit(40).effective_burst == 6
    assert [budget.try_acquire_now("retrieve") for _ in range(21)] == [True] * 20 + [False]
    ready = budget.next_available("retrieve")
    # 100 free slots spread until the burst leaves the 60.5 s window (which frees more)
    assert ready == pytest.approx(60.5 / 101)
    clock.advance(ready)
    assert budget.try_acquire_now("retrieve")
    assert not budget.try_acquire_now("retrieve")


@pytest.mark.anyio
async def test_fifo_fairness_with_staggered_arrivals() -> None:
    """Waiters that arrive one after another are served in arrival order."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    order: list[int] = []

    async def worker(i: int) -> None:
        await budget.acquire("queue")
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(worker, i)
            await settle(clock, budget)  # each one queues before the next starts
        while len(order) < 30:
            assert clock.advance_to_next()
            await settle(clock, budget)
    assert order == list(range(30))


@pytest.mark.anyio
async def test_cancelled_waiters_take_no_token_and_block_nobody() -> None:
    """Cancelling the head and a middle waiter leaves the tokens to the others, in order."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    order: list[int] = []
    scopes: dict[int, anyio.CancelScope] = {}

    async def worker(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            await budget.acquire("queue")
            order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(worker, i)
        await settle(clock, budget)
        assert budget.statistics().endpoints["queue"].waiting == 5
        scopes[0].cancel()  # the head, sleeping on the clock
        scopes[2].cancel()  # a waiter in the middle
        await settle(clock, budget)
        assert budget.statistics().endpoints["queue"].waiting == 3
        while len(order) < 3:
            assert clock.advance_to_next()
            await settle(clock, budget)
    assert order == [1, 3, 4]
    stats = budget.statistics().endpoints["queue"]
    assert stats.granted == 4
    assert stats.waiting == 0
    # the first waiter got the token as soon as the pacing interval allowed: none wasted
    assert budget.statistics().granted == 4


@pytest.mark.anyio
async def test_cancelled_last_waiter_leaves_the_endpoint_free() -> None:
    """After the only waiter is cancelled, the next token goes to a newcomer at once."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    async with anyio.create_task_group() as tg:
        tg.start_soon(budget.acquire, "queue")
        await settle(clock, budget)
        tg.cancel_scope.cancel()
    clock.advance(10)
    assert budget.try_acquire_now("queue")
    assert budget.statistics().endpoints["queue"].granted == 2


@pytest.mark.anyio
async def test_try_acquire_never_jumps_the_queue() -> None:
    """try_acquire refuses while a task waits, even when a token is free."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    done = anyio.Event()

    async def waiter() -> None:
        await budget.acquire("queue")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle(clock, budget)
        assert clock.advance_to_next()  # token free, waiter woken but not yet run
        assert not budget.try_acquire_now("queue")
        await done.wait()
    assert budget.statistics().endpoints["queue"].granted == 2


@pytest.mark.anyio
async def test_unlimited_endpoint_is_still_paused() -> None:
    """An endpoint without a rate is unlimited, but session pauses apply to it."""
    clock = ManualClock()
    budget = make_budget(clock)
    assert all(budget.try_acquire_now("complete") for _ in range(1000))
    budget.pause(3.0, reason="test")
    assert not budget.try_acquire_now("complete")
    assert budget.next_available("complete") == 3.0
    stats = budget.statistics()
    assert stats.endpoints["complete"].tokens_available is None
    assert stats.pause_reason == "test"
    clock.advance(3.0)
    assert budget.try_acquire_now("complete")


# --------------------------------------------------------------------------- 429 and headers


@pytest.mark.anyio
async def test_429_retry_after_pauses_every_endpoint() -> None:
    """A 429 on retrieve with Retry-After pauses queue and retrieve until it passes."""
    clock = ManualClock()
    budget = make_budget(clock)
    await budget.record_response("retrieve", 429, {"Retry-After": "10"})
    for endpoint in ("queue", "retrieve", "complete"):
        assert budget.next_available(endpoint) == 10.0
        assert not budget.try_acquire_now(endpoint)
    clock.advance(10.0)
    assert budget.try_acquire_now("queue")
    assert budget.try_acquire_now("retrieve")


@pytest.mark.anyio
async def test_waiter_sleeping_through_a_new_pause_waits_for_it() -> None:
    """A 429 arriving while a task waits for a token pushes its grant past the pause."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    granted_at: list[float] = []

    async def waiter() -> None:
        await budget.acquire("queue")
        granted_at.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle(clock, budget)
        await budget.record_response("retrieve", 429, {"retry-after": "7"})
        while not granted_at:
            assert clock.advance_to_next()
            await settle(clock, budget)
    assert granted_at == [7.0]


@pytest.mark.anyio
async def test_429_retry_after_is_capped() -> None:
    """An hour-long Retry-After is capped at max_retry_after."""
    clock = ManualClock()
    budget = make_budget(clock, max_retry_after=45.0)
    await budget.record_response("queue", 429, {"retry-after": "3600"})
    assert budget.next_available("retrieve") == 45.0


@pytest.mark.anyio
@pytest.mark.parametrize("unit", ["ms", "s"])
async def test_429_reset_header_in_ms_or_s_epoch(unit: str) -> None:
    """x-ratelimit-reset-requests works as a ms epoch and as a seconds epoch."""
    clock = ManualClock(start=100.0)
    budget = make_budget(clock)
    reset = clock.time() + 12.0
    value = str(round(reset * 1000)) if unit == "ms" else str(round(reset))
    await budget.record_response(
        "retrieve",
        429,
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": value},
    )
    assert budget.next_available("queue") == pytest.approx(112.0)


@pytest.mark.anyio
async def test_headerless_429_backs_off_and_resets_on_success() -> None:
    """429s without headers pause 5, 10, 20 s; a 2xx resets the sequence."""
    clock = ManualClock()
    budget = make_budget(clock)
    for expected in (5.0, 10.0, 20.0):
        await budget.record_response("queue", 429, {})
        assert budget.next_available("queue") - clock.monotonic() == expected
        clock.advance(expected)
    await budget.record_response("queue", 200, {})
    await budget.record_response("queue", 429, {})
    assert budget.next_available("queue") - clock.monotonic() == 5.0


@pytest.mark.anyio
async def test_remaining_zero_pauses_only_that_endpoint_until_reset() -> None:
    """A 200 with x-ratelimit-remaining-requests 0 pauses that endpoint until the reset."""
    clock = ManualClock()
    budget = make_budget(clock)
    await budget.record_response(
        "retrieve",
        200,
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": ms_epoch(clock, 8)},
    )
    assert budget.next_available("retrieve") == pytest.approx(8.0)
    assert not budget.try_acquire_now("retrieve")
    assert budget.try_acquire_now("queue")
    stats = budget.statistics()
    assert stats.paused_until is None
    assert stats.endpoints["retrieve"].paused_until == pytest.approx(8.0)
    assert stats.endpoints["retrieve"].tokens_available == 0
    assert stats.failures == 0
    clock.advance(8.0)
    assert budget.try_acquire_now("retrieve")


@pytest.mark.anyio
async def test_remaining_above_zero_does_not_pause() -> None:
    """Headers reporting budget left change nothing."""
    clock = ManualClock()
    budget = make_budget(clock)
    await budget.record_response(
        "retrieve",
        200,
        {
            "x-ratelimit-remaining-requests": "3",
            "x-ratelimit-reset-requests": ms_epoch(clock, 30),
            "x-ratelimit-remaining": "12",
            "x-ratelimit-resets": ms_epoch(clock, 30),
        },
    )
    assert budget.next_available("retrieve") == 0.0
    assert budget.next_available("queue") == 0.0


@pytest.mark.anyio
async def test_error_budget_headers_pause_the_session() -> None:
    """x-ratelimit-remaining 0 with x-ratelimit-resets pauses every endpoint until then."""
    clock = ManualClock()
    budget = make_budget(clock)
    await budget.record_response(
        "retrieve",
        429,
        {"x-ratelimit-remaining": "0", "x-ratelimit-resets": ms_epoch(clock, 30)},
    )
    assert budget.next_available("queue") == pytest.approx(30.0)
    # The error budget's 429: the key is locked out; it says nothing of the rate.
    assert budget.statistics().pause_reason == "failed-request budget exhausted"
    assert budget.statistics().rate_limited == 1


# --------------------------------------------------------------------------- failure window


@pytest.mark.anyio
async def test_failure_window_pauses_before_the_lockout() -> None:
    """Back-to-back failures never reach 20 in 30 s: the session slows down at 15."""
    clock = ManualClock()
    budget = make_budget(clock)
    failures: list[float] = []
    finished = anyio.Event()

    async def failing_client() -> None:
        while clock.monotonic() < 300:
            await budget.acquire("complete")
            failures.append(clock.monotonic())
            await budget.record_response("complete", 400, {})
            await clock.sleep(0.1)
        finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(failing_client)
        while not finished.is_set():
            await settle(clock, budget)
            if not finished.is_set():
                assert clock.advance_to_next()
    assert max_in_window(failures, 30.0 - 1e-6) == 15  # the server's window is (t - 30, t]
    stats = budget.statistics()
    assert stats.failures == len(failures)
    assert stats.failure_paused_seconds > 200
    assert stats.paused_seconds == 0


@pytest.mark.anyio
async def test_failure_window_counts_transport_failures_and_in_flight_ones() -> None:
    """Transport failures count; in-flight failures past the threshold extend the pause."""
    clock = ManualClock()
    budget = make_budget(clock, failure_window=(20, 30.0), failure_margin=5)
    for i in range(14):
        clock.advance(1.0)
        await budget.record_response("retrieve", 0, {})
        assert budget.try_acquire_now("retrieve"), i
    await budget.record_response("retrieve", 503, {})  # the 15th failure, at t=15
    assert budget.next_available("queue") == pytest.approx(31.0)  # first one (t=1) expires
    await budget.record_response("retrieve", 500, {})  # in flight, 16th
    assert budget.next_available("queue") == pytest.approx(32.0)
    stats = budget.statistics()
    assert stats.failures_in_window == 16
    assert stats.failure_paused_until == pytest.approx(32.0)
    assert stats.endpoints["queue"].tokens_available == 0
    clock.advance(40.0)
    assert budget.statistics().failures_in_window == 0
    assert budget.try_acquire_now("queue")


@pytest.mark.anyio
async def test_successes_do_not_feed_the_failure_window() -> None:
    """2xx and 3xx answers are not failures."""
    clock = ManualClock()
    budget = make_budget(clock)
    for status in (200, 201, 204, 304) * 10:
        await budget.record_response("retrieve", status, {})
    assert budget.statistics().failures == 0


# --------------------------------------------------------------------------- statistics


@pytest.mark.anyio
async def test_statistics_counts_429s_and_paused_seconds_once() -> None:
    """429s are counted per endpoint; overlapping pauses add their union only."""
    clock = ManualClock()
    budget = make_budget(clock)
    assert budget.try_acquire_now("queue")
    await budget.record_response("retrieve", 429, {"retry-after": "10"})
    clock.advance(4.0)
    await budget.record_response("queue", 429, {"retry-after": "10"})  # 10 -> 14: adds 4
    budget.pause(2.0, reason="shorter, inside")  # adds nothing
    stats = budget.statistics()
    assert isinstance(stats, BudgetStatistics)
    assert stats.rate_limited == 2
    assert stats.endpoints["retrieve"].rate_limited == 1
    assert stats.endpoints["queue"].rate_limited == 1
    assert stats.paused_seconds == pytest.approx(14.0)
    assert stats.paused_until == pytest.approx(14.0)
    assert stats.pause_reason == "429 from queue"
    assert stats.granted == 1
    assert stats.endpoints["queue"].tokens_available == 0
    assert stats.failures == 2
    clock.advance(20.0)
    stats = budget.statistics()
    assert stats.paused_until is None
    assert stats.pause_reason is None
    # The 429 came with one grant in the window: the queue limit dropped to its floor, an
    # eighth of the configured 40 (5), and the window started at the 429: nothing used
    # in it, one token at a time (calm: no burst while recovering).
    assert stats.endpoints["queue"].tokens_available == 1
    assert stats.endpoints["queue"].utilisation == pytest.approx(0.0)


def snapshot_of(paused_until: float, failure_paused_until: float) -> BudgetStatistics:
    """budget_statistics at t=10: queue (limited) paused until 12, retrieve (limited) until
    8, complete unlimited."""
    rows = (("queue", 4, 12.0), ("retrieve", 9, 8.0), ("complete", None, -1.0))
    endpoints = [
        EndpointFigures(
            endpoint=name,
            tokens=tokens,
            used=3 if tokens is not None else 0,
            limit=12 if tokens is not None else None,
            granted=5,
            waiting=1,
            rate_limited=0,
            paused_seconds=0.0,
            paused_until=until,
        )
        for name, tokens, until in rows
    ]
    return budget_statistics(
        10.0,
        endpoints,
        granted=10,
        rate_limited=1,
        paused_seconds=3.0,
        paused_until=paused_until,
        pause_reason="429 from queue",
        failures=2,
        failures_in_window=1,
        failure_paused_until=failure_paused_until,
        failure_paused_seconds=0.0,
    )


def test_one_snapshot_rule_for_every_budget() -> None:
    """No tokens while anything holds requests; unlimited stays None; ended pauses left out."""
    stats = snapshot_of(paused_until=9.0, failure_paused_until=-math.inf)
    tokens = {name: e.tokens_available for name, e in stats.endpoints.items()}
    assert tokens == {"queue": 0, "retrieve": 9, "complete": None}
    assert stats.endpoints["queue"].paused_until == 12.0
    assert stats.endpoints["retrieve"].paused_until is None
    assert stats.endpoints["queue"].utilisation == pytest.approx(3 / 12)
    assert stats.endpoints["complete"].utilisation == 0.0
    assert (stats.paused_until, stats.pause_reason, stats.failure_paused_until) == (None,) * 3
    held = snapshot_of(paused_until=-math.inf, failure_paused_until=11.0)
    tokens = {name: e.tokens_available for name, e in held.endpoints.items()}
    assert tokens == {"queue": 0, "retrieve": 0, "complete": None}
    assert held.failure_paused_until == 11.0
    paused = snapshot_of(paused_until=15.0, failure_paused_until=-math.inf)
    assert (paused.paused_until, paused.pause_reason) == (15.0, "429 from queue")
    assert paused.endpoints["retrieve"].tokens_available == 0


def test_local_budget_is_a_request_budget() -> None:
    """LocalBudget satisfies the RequestBudget protocol."""
    assert isinstance(make_budget(ManualClock()), RequestBudget)


def test_the_protocol_is_what_the_library_calls() -> None:
    """RequestBudget asks for acquire and record_response (async), three sync views, and
    five sync calls with defaults (try_acquire_now, record_response_now, session_paused,
    share_demand, share_run_times)."""
    members = {name for name in vars(RequestBudget) if not name.startswith("_")}
    assert members == {
        "acquire",
        "record_response",
        "next_available",
        "window",
        "statistics",
        "try_acquire_now",
        "record_response_now",
        "session_paused",
        "share_demand",
        "share_run_times",
    }
    awaited = {"acquire", "record_response"}
    for name in members:
        assert inspect.iscoroutinefunction(getattr(RequestBudget, name)) == (name in awaited)


@pytest.mark.anyio
async def test_acquire_without_deadline_returns_true() -> None:
    """With no deadline acquire always ends with a token, and says so."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert await budget.acquire("queue") is True
    async with anyio.create_task_group() as tg:
        got: list[bool] = []

        async def take() -> None:
            got.append(await budget.acquire("queue"))

        tg.start_soon(take)
        await settle(clock, budget)
        assert clock.advance_to_next()
    assert got == [True]


@pytest.mark.anyio
async def test_a_deadline_before_the_next_token_gives_up_at_once() -> None:
    """acquire(deadline_at=) returns False without waiting or taking a token."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    ready = budget.next_available("queue")
    assert ready == pytest.approx(60.5 / 40)
    assert await budget.acquire("queue", deadline_at=ready - 0.1) is False
    assert clock.monotonic() == 0.0
    assert clock.pending == 0
    assert budget.statistics().endpoints["queue"].granted == 1
    assert budget.statistics().endpoints["queue"].waiting == 0


@pytest.mark.anyio
async def test_a_deadline_after_the_next_token_waits_for_it() -> None:
    """A token due before the deadline is waited for and taken."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    ready = budget.next_available("queue")
    got: list[bool] = []

    async def take() -> None:
        got.append(await budget.acquire("queue", deadline_at=ready + 1.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await settle(clock, budget)
        assert clock.advance_to_next()
    assert got == [True]
    assert clock.monotonic() == pytest.approx(ready)


@pytest.mark.anyio
async def test_a_pause_past_the_deadline_ends_the_wait() -> None:
    """A 429 arriving while a waiter sleeps pushes its token past the deadline: False."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    got: list[bool] = []

    async def take() -> None:
        got.append(await budget.acquire("queue", deadline_at=5.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await settle(clock, budget)
        await budget.record_response("queue", 429, {"retry-after": "30"})
        while not got:
            assert clock.advance_to_next()
            await settle(clock, budget)
    assert got == [False]
    assert clock.monotonic() < 5.0
    assert budget.statistics().endpoints["queue"].granted == 1


@pytest.mark.anyio
async def test_a_waiter_behind_others_gives_up_at_its_deadline_and_blocks_nobody() -> None:
    """Behind a queue of waiters, the deadline passes: False; the next waiter still gets in."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40, burst=1)})
    assert budget.try_acquire_now("queue")
    results: dict[str, bool] = {}

    async def take(name: str, deadline: float | None) -> None:
        results[name] = await budget.acquire("queue", deadline_at=deadline)

    interval = 60.5 / 40
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "first", None)
        await settle(clock, budget)
        tg.start_soon(take, "hurried", interval * 0.5)  # passes while "first" still waits
        await settle(clock, budget)
        tg.start_soon(take, "last", None)
        await settle(clock, budget)
        while len(results) < 3:
            assert clock.advance_to_next()
            await settle(clock, budget)
    assert results == {"first": True, "hurried": False, "last": True}
    assert list(results) == ["hurried", "first", "last"]
    assert budget.statistics().endpoints["queue"].granted == 3
    assert budget.statistics().endpoints["queue"].waiting == 0


@pytest.mark.anyio
async def test_100k_acquires_are_fast_and_memory_bounded() -> None:
    """100k acquires at the sustained rate run quickly; the grant log stays bounded."""
    clock = ManualClock()
    budget = make_budget(clock, {"retrieve": RateLimit(120, burst=1)})
    started = time.perf_counter()
    for _ in range(100_000):
        await budget.acquire("retrieve")
        clock.advance(0.51)
    elapsed = time.perf_counter() - started
    stats = budget.statistics().endpoints["retrieve"]
    assert stats.granted == 100_000
    assert stats.utilisation <= 1.0
    assert elapsed < 5.0, elapsed


# --------------------------------------------------------------------------- pure helpers


def test_parse_reset_heuristic() -> None:
    """Milliseconds, seconds and relative values are told apart by magnitude."""
    now = NOW_EPOCH
    assert parse_reset(str(int((now + 5) * 1000)), now) == pytest.approx(5.0)
    assert parse_reset(str(int(now + 5)), now) == pytest.approx(5.0)
    assert parse_reset("17", now) == 17.0
    assert parse_reset(" 2.5 ", now) == 2.5
    assert parse_reset(str(int((now - 5) * 1000)), now) == 0.0  # in the past
    for bad in ("", "soon", "-3", "nan", "inf"):
        assert parse_reset(bad, now) is None


def test_retry_delay_from_headers() -> None:
    """Retry-After and exhausted reset headers are combined (longest wins) and capped."""
    now = NOW_EPOCH
    ms = str(int((now + 20) * 1000))
    assert retry_delay_from_headers({}, now, 60) is None
    assert retry_delay_from_headers({"RETRY-AFTER": "3"}, now, 60) == 3.0
    assert retry_delay_from_headers({"retry-after": "junk"}, now, 60) is None
    date = email.utils.formatdate(now + 9, usegmt=True)
    assert retry_delay_from_headers({"Retry-After": date}, now, 60) == pytest.approx(9.0)
    assert retry_delay_from_headers({"x-ratelimit-reset-requests": ms}, now, 60) == 20.0
    assert (
        retry_delay_from_headers(
            {"x-ratelimit-reset-requests": ms, "x-ratelimit-remaining-requests": "4"}, now, 60
        )
        is None
    )
    assert (
        retry_delay_from_headers(
            {"Retry-After": "3", "X-RateLimit-Resets": ms, "x-ratelimit-remaining": "0"}, now, 60
        )
        == 20.0
    )
    assert retry_delay_from_headers({"retry-after": "600"}, now, 60) == 60.0


def test_invalid_configuration_is_refused() -> None:
    """Nonsense limits raise ValueError."""
    with pytest.raises(ValueError, match="per_minute"):
        RateLimit(0.5)
    with pytest.raises(ValueError, match="per_minute"):
        RateLimit(math.inf)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(40, burst=0)
    with pytest.raises(ValueError, match="margin"):
        RateLimit(40, margin=-1)
    with pytest.raises(ValueError, match="failure_margin"):
        make_budget(ManualClock(), failure_window=(5, 30.0), failure_margin=5)
    with pytest.raises(ValueError, match="max_retry_after"):
        make_budget(ManualClock(), max_retry_after=-1)
    make_budget(ManualClock(), max_retry_after=0)  # RetryPolicy.testing(): honour no waits
    budget = make_budget(ManualClock())
    with pytest.raises(ValueError, match="number"):
        budget.pause(math.nan, reason="x")
    assert RateLimit(40, burst=100).effective_burst == 40


class _ProtocolOnly:
    """A budget with exactly the protocol's methods, delegating to a LocalBudget."""

    def __init__(self, inner: LocalBudget) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def acquire(
        self, endpoint: str, *, deadline_at: float | None = None, model: str | None = None
    ) -> bool:
        self.calls.append(f"acquire {endpoint}")
        return await self.inner.acquire(endpoint, deadline_at=deadline_at, model=model)

    async def record_response(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        self.calls.append(f"record {endpoint} {status}")
        await self.inner.record_response(endpoint, status, headers, message=message, model=model)

    def try_acquire_now(self, endpoint: str) -> bool:
        return False  # as a shared store would: the session then waits in acquire

    def record_response_now(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> bool:
        return False  # as a shared store would: the session then awaits record_response

    def share_demand(self, endpoint: str, demand: Sequence[float]) -> tuple[float, ...] | None:
        return None  # alone on its key

    def share_run_times(self, finished: Sequence[RunTime]) -> Sequence[RunTime]:
        return ()  # alone on its key

    def session_paused(self) -> bool:
        return self.inner.session_paused()

    def next_available(self, endpoint: str) -> float:
        return self.inner.next_available(endpoint)

    def window(self, endpoint: str) -> RateWindow | None:
        return self.inner.window(endpoint)

    def statistics(self) -> BudgetStatistics:
        return self.inner.statistics()


@pytest.mark.anyio
async def test_a_session_needs_nothing_beyond_the_protocol(fake_server: FakeServer) -> None:
    """A session runs on a budget offering only the protocol, and records every answer."""
    clock = ScaledClock(TIME_SCALE)
    budget = _ProtocolOnly(LocalBudget(clock=clock, rates={"queue": RateLimit(40)}))
    fake_server.plan(JobScript(duration=1.0))
    async with make_session(fake_server, clock=clock, budget=budget) as session:
        audio = await session.generate("stable-audio-25", "a shared budget's first job")
    requests = session.statistics().requests  # after close: the media release is counted
    assert audio.size > 0
    assert isinstance(budget, RequestBudget)
    acquired = [c for c in budget.calls if c.startswith("acquire")]
    recorded = [c for c in budget.calls if c.startswith("record")]
    assert len(acquired) == len(recorded) == sum(requests.values())
    assert "record queue 200" in recorded


# --------------------------------------------------------------------------- adaptive limits


def _fill(budget: LocalBudget, clock: ManualClock, endpoint: str, n: int, gap: float) -> None:
    for _ in range(n):
        assert budget.try_acquire_now(endpoint)
        clock.advance(gap)


@pytest.mark.anyio
async def test_a_429_lowers_the_limit_below_the_last_windows_grants() -> None:
    """80 retrieves granted, then a 429: the limit drops to 64 (0.8 x 80) and the window
    starts at the 429 (the grants before it no longer count); each further 429 of the same
    burst takes one more."""
    clock = ManualClock()
    budget = make_budget(clock, {"retrieve": RateLimit(120, burst=120)})
    _fill(budget, clock, "retrieve", 80, 0.5)
    await budget.record_response("retrieve", 429, {"retry-after": "1"})
    await budget.record_response("retrieve", 429, {"retry-after": "1"})
    window = budget.window("retrieve")
    assert window is not None
    assert window.limit == 63
    assert window.grants == ()
    clock.advance(10.0)  # a new burst, the window still calm: a fifth off the limit
    await budget.record_response("retrieve", 429, {"retry-after": "1"})
    assert budget.window("retrieve").limit == 50  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_lowered_limit_recovers_after_a_quiet_window() -> None:
    """No 429 for a quarter window: the limit climbs back a tenth of the ceiling."""
    clock = ManualClock()
    budget = make_budget(clock, {"retrieve": RateLimit(120, burst=120)})
    _fill(budget, clock, "retrieve", 50, 0.1)
    await budget.record_response("retrieve", 429, {})
    low = budget.window("retrieve")
    assert low is not None
    assert low.limit == 40
    clock.advance(60.5 / 4)
    assert budget.window("retrieve").limit == 52  # type: ignore[union-attr]
    clock.advance(60.5 / 8)
    assert budget.window("retrieve").limit == 52  # type: ignore[union-attr]
    clock.advance(60.5 / 8)
    assert budget.window("retrieve").limit == 64  # type: ignore[union-attr]
    for _ in range(10):
        budget.window("retrieve")
        clock.advance(60.6 / 4)
    assert budget.window("retrieve").limit == 120  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_stated_limit_caps_the_configured_one_at_once() -> None:
    """x-ratelimit-limit-requests below ours wins within one answer; above ours changes
    nothing."""
    clock = ManualClock()
    budget = make_budget(clock, {"retrieve": RateLimit(120, burst=120)})
    await budget.record_response("retrieve", 200, {"x-ratelimit-limit-requests": "60"})
    assert budget.window("retrieve").limit == 60  # type: ignore[union-attr]
    _fill(budget, clock, "retrieve", 60, 0.0)
    assert not budget.try_acquire_now("retrieve")
    other = make_budget(clock, {"retrieve": RateLimit(120, burst=120)})
    await other.record_response("retrieve", 200, {"x-ratelimit-limit-requests": "500"})
    assert other.window("retrieve").limit == 120  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_stated_limit_applies_to_an_unlimited_endpoint() -> None:
    """An endpoint configured without a limit takes the one the API states."""
    clock = ManualClock()
    budget = make_budget(clock, {})
    assert budget.window("quote") is None
    await budget.record_response("quote", 200, {"x-ratelimit-limit-requests": "3"})
    _fill(budget, clock, "quote", 3, 0.0)
    assert not budget.try_acquire_now("quote")


@pytest.mark.anyio
async def test_remaining_and_reset_cap_grants_until_the_reset() -> None:
    """remaining=2 until a reset 10 s away: two more grants, then none until the reset."""
    clock = ManualClock()
    budget = make_budget(clock, {"retrieve": RateLimit(120, burst=120)})
    await budget.record_response(
        "retrieve",
        200,
        {"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "10"},
    )
    window = budget.window("retrieve")
    assert window is not None
    assert window.free_after(0.0, clock.monotonic()) == 2
    assert window.free_after(11.0, clock.monotonic()) == 120
    _fill(budget, clock, "retrieve", 2, 0.0)
    assert not budget.try_acquire_now("retrieve")
    assert budget.next_available("retrieve") == pytest.approx(10.0)
    clock.advance(10.0)
    assert budget.try_acquire_now("retrieve")


# --------------------------------------------------------------------------- stated and pooled


@pytest.mark.anyio
async def test_stated_limit_on_an_unconfigured_endpoint_is_enforced() -> None:
    """A limit stated for an endpoint without one of ours applies (and acquire never fails)."""
    clock = ManualClock()
    budget = make_budget(clock, {})
    await budget.record_response("quote", 200, {"x-ratelimit-limit-requests": "5"})
    grants: list[float] = []
    for _ in range(8):
        await _acquire_advancing(clock, budget, "quote")
        grants.append(clock.monotonic())
    assert max_in_window(grants, 59.999) <= 5  # a 60 s window without margin: half-open
    window = budget.window("quote")
    assert window is not None
    assert window.limit == 5


async def _acquire_advancing(clock: ManualClock, budget: LocalBudget, endpoint: str) -> None:
    async with anyio.create_task_group() as tg:
        done = anyio.Event()

        async def take() -> None:
            await budget.acquire(endpoint)
            done.set()

        tg.start_soon(take)
        while not done.is_set():
            await settle(clock, budget)
            if not done.is_set():
                assert clock.advance_to_next()


@pytest.mark.anyio
async def test_pooled_limit_caps_its_endpoints_together() -> None:
    """A pool of 10/min over queue and retrieve grants at most 10 in any minute to both."""
    clock = ManualClock()
    budget = make_budget(
        clock,
        {"queue": RateLimit(40), "retrieve": RateLimit(120, 120)},
        pool=RateLimit(10, 10),
        pooled_endpoints={"queue", "retrieve"},
    )
    grants: list[float] = []

    async def worker(endpoint: str) -> None:
        await budget.acquire(endpoint)
        grants.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(worker, "queue" if i % 2 else "retrieve")
        while len(grants) < 30:
            await settle(clock, budget)
            if len(grants) < 30:
                assert clock.advance_to_next()
    assert max_in_window(grants, 60.0) <= 10
    assert grants[-1] <= 3 * 60.5 + 1
    window = budget.window("retrieve")  # the pool is the tighter window now
    assert window is not None
    assert window.limit == 10
    await budget.acquire("complete")  # not in this pool: free


@pytest.mark.anyio
async def test_429_on_a_pooled_endpoint_lowers_the_pool() -> None:
    """A 429 on a pooled endpoint lowers the pool's limit below its last window too."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40)}, pool=RateLimit(10, 10))
    for _ in range(10):
        assert budget.try_acquire_now("retrieve")
    assert not budget.try_acquire_now("retrieve")
    await budget.record_response("retrieve", 429, {"Retry-After": "1"})
    clock.advance(1.0)
    window = budget.window("retrieve")
    assert window is not None
    assert window.limit == 8


@pytest.mark.anyio
async def test_queue_calls_come_before_polls_in_the_pool() -> None:
    """Both waiting on a full pool, the queue call gets the freed slot though the polls
    asked first; the polls go once no queue call waits (issue 22 point 2)."""
    clock = ManualClock()
    budget = make_budget(
        clock, {"queue": RateLimit(40), "retrieve": RateLimit(120, 120)}, pool=RateLimit(6, 6)
    )
    for _ in range(6):  # a full pool, its slots freeing one at a time
        assert budget.try_acquire_now("retrieve")
        clock.advance(1.0)
    order: list[str] = []

    async def worker(endpoint: str) -> None:
        await budget.acquire(endpoint)
        order.append(endpoint)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, "retrieve")
        tg.start_soon(worker, "retrieve")
        await settle(clock, budget)
        tg.start_soon(worker, "queue")
        tg.start_soon(worker, "queue")
        while len(order) < 4:
            await settle(clock, budget)
            if len(order) < 4:
                assert clock.advance_to_next()
    assert order == ["queue", "queue", "retrieve", "retrieve"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "pool",
    [RateLimit(60), pooled_rate(RateLimits())],
    ids=["paced pool", "the session's pool (a bare log)"],
)
async def test_a_large_batch_being_queued_leaves_polls_their_part_of_the_pool(
    pool: RateLimit,
) -> None:
    """100 queue calls waiting under the documented pool (60/min over queue and polls, the
    queue at 40/min): the queue calls still go at their own limit's pace, first, and a
    poller gets the pool's remaining room meanwhile, not nothing until the batch is all
    queued (results are wanted while a batch is still being queued): the pool keeps for the
    queue calls what the queue's own limit lets through, and paces polls at what is left."""
    clock = ManualClock()
    budget = make_budget(clock, {"queue": RateLimit(40), "retrieve": RateLimit(120)}, pool=pool)
    queued: list[float] = []
    polled: list[float] = []

    async def submit() -> None:
        await budget.acquire("queue")
        queued.append(clock.monotonic())

    async def poll() -> None:
        while len(queued) < 100:
            await budget.acquire("retrieve")
            polled.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(submit)
        tg.start_soon(poll)
        while len(queued) < 100:
            await settle(clock, budget)
            if len(queued) < 100:
                assert clock.advance_to_next()
        tg.cancel_scope.cancel()  # the poller waits for its next token
    assert busiest_window(queued + polled, 60.5) <= 60
    first_minute = [t for t in queued if t < 60.0]
    # Near the queue's own pace (40 a minute; the pool's pacing between grants costs some).
    assert len(first_minute) >= 30
    while_queueing = [t for t in polled if t < queued[-1]]
    # 100 calls at 40 a minute take 2.5 minutes; the pool leaves polls ~20 a minute of them.
    assert len(while_queueing) >= 25
    # From the first minute on, while most of the batch still waits.
    assert len([t for t in polled if t < 60.0]) >= 10


def test_a_count_over_every_endpoint_does_not_read_our_queue_calls_as_others() -> None:
    """Under a pool, a retrieve answer whose count covers every endpoint of the key (10
    queue calls and 5 polls of ours: 15 of 60 used) shows no other client; one that counts
    5 more than all of ours shows those 5 (whether the API counts per endpoint is [UNK])."""
    for used, others in ((15, 0), (20, 5)):
        clock = ManualClock()
        budget = make_budget(
            clock,
            {"queue": RateLimit(40, 40), "retrieve": RateLimit(120, 120)},
            pool=RateLimit(60, 60),
        )
        for endpoint, count in (("queue", 10), ("retrieve", 5)):
            for _ in range(count):
                assert budget.try_acquire_now(endpoint)
                clock.advance(0.1)
        headers = {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": str(60 - used),
            "x-ratelimit-reset-requests": str(round((clock.time() + 50) * 1000)),
        }
        budget.learn("retrieve", 200, headers)
        window = budget.window("retrieve")
        assert window is not None
        assert window.others == others


def test_session_maps_pooled_per_minute_onto_the_pool() -> None:
    """RateLimits(pooled_per_minute=...) becomes the session budget's pool over audio."""
    from venice_audio_async import AsyncSession, RateLimits

    session = AsyncSession(api_key="k", rate_limits=RateLimits(pooled_per_minute=60))
    budget = session._parts.budget
    assert isinstance(budget, LocalBudget)
    for endpoint in ("quote", "queue", "retrieve", "complete"):
        window = budget.window(endpoint)
        assert window is not None
        assert window.limit == (40 if endpoint == "queue" else 60)


def test_only_a_plain_success_is_read_as_teaching_nothing() -> None:
    """A 2xx without x-ratelimit-* headers (in any case) teaches nothing; any such
    header, or any other status, is read in full."""
    plain = {"content-type": "application/json", "content-length": "85"}
    assert teaches_nothing(200, plain)
    assert teaches_nothing(204, {})
    assert not teaches_nothing(429, plain)
    assert not teaches_nothing(500, {})
    assert not teaches_nothing(200, {**plain, "X-RateLimit-Limit-Requests": "60"})
    assert not teaches_nothing(200, {"x-ratelimit-remaining": "0"})


def test_a_stated_limit_on_a_success_in_mixed_case_is_learned() -> None:
    """A 200 stating its limit with mixed-case names caps the endpoint at once; the
    session-wide pause view stays clear."""
    budget = LocalBudget(clock=ManualClock(), rates={"retrieve": RateLimit(per_minute=120)})
    budget.learn("retrieve", 200, {"X-RateLimit-Limit-Requests": "30"})
    window = budget.window("retrieve")
    assert window is not None
    assert window.limit == 30
    assert not budget.session_paused()
    budget.learn("retrieve", 429, {"retry-after": "5"})
    assert budget.session_paused()


@pytest.mark.anyio
async def test_the_recorder_learns_at_once_where_the_budget_can() -> None:
    """An in-process budget learns each answer synchronously (``record_response_now``: no
    cancel scope, no await on the poll path); a budget without it, or one that declines
    (a shared store), is awaited through ``record_response``."""

    class Counting(LocalBudget):
        awaited = 0

        async def record_response(self, *args: Any, **kwargs: Any) -> None:
            self.awaited += 1
            await super().record_response(*args, **kwargs)

    class Declining(Counting):
        def record_response_now(self, *args: Any, **kwargs: Any) -> bool:
            return False

    local = Counting(clock=ManualClock(), rates={"retrieve": RateLimit(120)})
    await ResponseRecorder(local)("retrieve", 429, {"retry-after": "2"})
    assert local.awaited == 0
    assert local.statistics().rate_limited == 1  # learnt all the same

    shared = Declining(clock=ManualClock(), rates={"retrieve": RateLimit(120)})
    await ResponseRecorder(shared)("retrieve", 429, {"retry-after": "2"})
    assert shared.awaited == 1
    assert shared.statistics().rate_limited == 1
