"""Request budgets: when may the next request to an endpoint be sent.

Everything that limits the request rate sits behind one small interface,
:class:`RequestBudget`, so that several processes sharing one API key can later share one
budget through an external store (Redis) instead of each spending the whole limit.
:class:`LocalBudget` is the in-process implementation.

A request to ``endpoint`` may be sent when all of these hold:

1. **The endpoint's rate limit** (:class:`RateLimit`) has room: see below.
2. **The session is not paused.** A 429 pauses every endpoint until ``Retry-After`` or the
   reset header (capped by ``max_retry_after``); an exhausted error budget
   (``x-ratelimit-remaining: 0``) pauses until ``x-ratelimit-resets``; :meth:`~LocalBudget.pause`
   pauses on request.
3. **The endpoint is not paused.** ``x-ratelimit-remaining-requests: 0`` pauses that endpoint
   until ``x-ratelimit-reset-requests``.
4. **The failure window is not full.** Venice locks a key for 30 s after more than 20 failed
   (non-2xx) requests in 30 s. Every failure (status >= 400, or a transport failure) is
   logged; once ``limit - margin`` failures (default 20 - 5 = 15) lie within the last
   ``window`` seconds, new requests wait until the oldest of them leaves the window. The
   margin absorbs requests already in flight, so a burst of errors slows the session down
   instead of tripping the lockout.

The rate limit itself (a sliding-window log, plus pacing, with a limit that adapts to 429s
and to limits the API states) is kept per endpoint by :class:`~._rate.endpoint_rate.EndpointRate`.

All waiting goes through the injected :class:`~._core.clock.Clock`. Waiters on an
endpoint form a FIFO queue; only its head sleeps on the clock, the rest wait on an event until
promoted, so each grant costs O(1) amortised whatever the number of waiters. A cancelled waiter
leaves the queue without taking a token and hands the head position on.
"""

from __future__ import annotations

import bisect
import inspect
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from .._core.clock import Clock
from .._core.config import AUDIO_ENDPOINTS, RateLimit, check_number, is_assumed
from .._core.logging import log
from .endpoint_rate import (
    EndpointRate,
    LinePlan,
    Waiter,
    pool_refuted_message,
    queue_reserve,
    reached,
    token_eta,
)
from .lessons import read_signals, teaches_nothing
from .statistics import BudgetStatistics, EndpointFigures, budget_statistics

__all__ = [
    "BudgetStatistics",
    "LocalBudget",
    "RateWindow",
    "RequestBudget",
    "RunTime",
    "ResponseRecorder",
    "hold_model",
    "log_too_late",
    "session_paused",
    "share_run_times",
    "takes_keyword",
    "tighter_window",
    "try_acquire_now",
    "wait_out_model_hold",
]


@attrs.frozen
class RateWindow:
    """What the poll policy reads of one endpoint's rate limit, without taking a token.

    ``limit`` is the effective limit now (the configured one, capped by a limit the API
    stated and lowered after 429s); ``grants`` the times (``clock.monotonic()``, oldest
    first) of the grants still inside the sliding ``window``. ``allowance`` is what the
    API last said remains (``x-ratelimit-remaining-requests``) until ``allowance_until``,
    minus what was granted since; ``None`` when it said nothing. ``others``: requests of
    other clients on the key inside the server's window, as the API's last stated count
    showed them (its ``limit - remaining`` beyond the budget's own grants; 0 when unknown):
    the poll policy expects them to go on wanting a share of the window.

    .. versionadded:: 0.1.0
    """

    limit: int
    window: float
    grants: tuple[float, ...]
    allowance: int | None = None
    allowance_until: float | None = None
    others: int = 0

    def free_after(self, seconds: float, now: float) -> int:
        """Grants the window will allow ``seconds`` from now, if none were made meanwhile."""
        horizon = now + seconds - self.window
        still_inside = len(self.grants) - bisect.bisect_right(self.grants, horizon)
        free = self.limit - still_inside
        if (
            self.allowance is not None
            and self.allowance_until is not None
            and now + seconds < self.allowance_until
        ):
            free = min(free, self.allowance)
        return max(0, free)


@attrs.frozen
class RunTime:
    """How long one finished job of ``model`` ran (``seconds``), and the server's estimate
    for it (``hint``, its ``average_execution_time``; ``None`` when it gave none): what
    processes sharing a budget tell each other (:meth:`RequestBudget.share_run_times`).

    .. versionadded:: 0.1.0
    """

    model: str
    seconds: float
    hint: float | None = None


@runtime_checkable
class RequestBudget(Protocol):
    """Decides when a request to an endpoint may be sent, and learns from every answer.

    Endpoints are plain names chosen by the caller (``"queue"``, ``"retrieve"``, ...). The
    two calls that may need a shared store (taking a token, learning from an answer) are
    async; the views read by the poll policy and by progress displays are synchronous
    snapshots that never wait and never do I/O (a shared store serves them from what its
    last round trip told it). A budget shared between processes must apply the rules of
    :class:`LocalBudget` (429 pauses, stated limits, the failed-request window).

    .. versionadded:: 0.1.0
    """

    async def acquire(
        self, endpoint: str, *, deadline_at: float | None = None, model: str | None = None
    ) -> bool:
        """Wait until one request to ``endpoint`` may be sent, then take the token.

        ``model``: the request's model; a ``queue`` call waits out that model's hold (an
        overloaded model's 429) first. Waiters of this process are served first come, first
        served. ``deadline_at`` is a ``clock.monotonic()`` reading: when no token can be had by
        then, return ``False`` without taking one: at once when the caller's place in line
        already says so (counting ahead of it only the waiters that can make their own
        deadlines), else when the deadline passes while waiting. Returns ``True`` when a
        token was taken. Cancelling a waiter takes no token.
        """
        ...

    async def record_response(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        """Learn from an answer (any status); ``status=0`` records a transport failure.

        ``message``: an error answer's text (the three 429s differ only by it);
        ``model``: the request's model (an overloaded model holds its queue calls only).
        """
        ...

    def next_available(self, endpoint: str) -> float:
        """The ``clock.monotonic()`` time at which a token for ``endpoint`` is next free."""
        ...

    def window(self, endpoint: str) -> RateWindow | None:
        """The endpoint's rate window now (``None``: not rate limited). Takes no token."""
        ...

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot of the budget."""
        ...

    def try_acquire_now(self, endpoint: str) -> bool:
        """Take a token for ``endpoint`` if one is free now, without waiting or I/O.

        The default takes none (a shared store cannot answer synchronously): callers then
        :meth:`acquire`.
        """
        return False

    def record_response_now(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> bool:
        """Learn from an answer at once, without waiting or I/O, if this budget can;
        whether it did (as :meth:`record_response` would).

        The default learns nothing (a shared store needs a round trip): callers then await
        :meth:`record_response`. An in-process budget answers every poll here, which keeps
        the poll path free of a cancel scope and a task switch.
        """
        return False

    def share_demand(self, endpoint: str, demand: Sequence[float]) -> tuple[float, ...] | None:
        """Tell the budget what this process's polls want of ``endpoint`` (tokens at the poll
        policy's look-ahead horizons); what other processes sharing it want, summed over the
        same horizons, as last heard. No I/O.

        The default shares with nobody (``None``): a budget of one process alone. A budget
        shared between processes (:class:`~venice_audio_async.budget.RedisBudget`) answers,
        so that every process prices its polls at one figure.
        """
        return None

    def share_run_times(self, finished: Sequence[RunTime]) -> Sequence[RunTime]:
        """Tell the budget how long jobs this process saw finish ran; how long the jobs
        other processes sharing it saw finish ran, heard since the last call. No I/O.

        The default shares with nobody (``()``). A budget shared between processes
        (:class:`~venice_audio_async.budget.RedisBudget`) answers, so that every process
        learns its models' run times from all the jobs on the key: three processes with a
        third of the jobs each would otherwise each learn three times slower than one.
        """
        return ()

    def session_paused(self) -> bool:
        """Whether every request is held right now (a 429's pause, the failed-request
        window). The default reads :meth:`statistics`."""
        stats = self.statistics()
        return stats.paused_until is not None or stats.failure_paused_until is not None


def takes_keyword(method: Callable[..., object], name: str) -> bool:
    """Whether ``method`` accepts the keyword argument ``name`` (a budget written before
    the protocol grew it does not)."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the current protocol
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def try_acquire_now(budget: RequestBudget, endpoint: str) -> bool:
    """``budget.try_acquire_now(endpoint)``, or ``False`` for a budget written before it."""
    take = getattr(budget, "try_acquire_now", None)
    return bool(take(endpoint)) if take is not None else False


def share_run_times(budget: RequestBudget, finished: Sequence[RunTime]) -> Sequence[RunTime]:
    """``budget.share_run_times(finished)``, or nothing heard for a budget written before it."""
    share = getattr(budget, "share_run_times", None)
    return share(finished) if share is not None else ()


def record_response_now(
    budget: RequestBudget,
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    *,
    message: str | None,
    model: str | None,
) -> bool:
    """``budget.record_response_now(...)``, or ``False`` for a budget written before it."""
    learn = getattr(budget, "record_response_now", None)
    if learn is None:
        return False
    return bool(learn(endpoint, status, headers, message=message, model=model))


def session_paused(budget: RequestBudget) -> bool:
    """``budget.session_paused()``, or :meth:`RequestBudget.session_paused`'s default."""
    paused = getattr(budget, "session_paused", None)
    if paused is not None:
        return bool(paused())
    return RequestBudget.session_paused(budget)


class ResponseRecorder:
    """The transport's observer: counts requests per endpoint and tells the budget of each
    answer (so a 429 pauses the session before the error reaches whoever sent it)."""

    def __init__(self, budget: RequestBudget) -> None:
        self._budget = budget
        self.requests: dict[str, int] = {}
        # A budget written before the protocol took an answer's message and model.
        self._detailed = takes_keyword(budget.record_response, "message")

    async def __call__(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        budget = self._budget
        if record_response_now(budget, endpoint, status, headers, message=message, model=model):
            return  # learnt at once: nothing could interrupt it
        # What the answer taught (a 429's pause) is kept even if the caller is being
        # cancelled or its status deadline passes meanwhile (a shared store's round trip).
        with anyio.CancelScope(shield=True):
            if self._detailed:
                await self._budget.record_response(
                    endpoint, status, headers, message=message, model=model
                )
            else:
                await self._budget.record_response(endpoint, status, headers)


def tighter_window(
    own: RateWindow | None, pooled: RateWindow | None, now: float
) -> RateWindow | None:
    """Of an endpoint's own window and its pool's, the one with fewer free grants now."""
    if own is None or pooled is None:
        return own if pooled is None else pooled
    return pooled if pooled.free_after(0.0, now) < own.free_after(0.0, now) else own


def hold_model(held: dict[str, float], model: str, until: float) -> bool:
    """Hold ``model``'s queue calls until ``until`` (extends only); whether it was extended."""
    if until <= held.get(model, -math.inf):
        return False
    held[model] = until
    return True


async def wait_out_model_hold(
    held: Mapping[str, float], model: str, clock: Clock, deadline: float | None
) -> bool:
    """Sleep until ``model``'s hold ends; ``False`` (at once) if it ends after ``deadline``."""
    while True:
        now = clock.monotonic()
        until = held.get(model, -math.inf)
        if reached(until, now):
            return True
        if deadline is not None and not reached(until, deadline):
            return False
        await clock.sleep(until - now)


def log_too_late(endpoint: str, expected: float, allowed: float, ahead: int) -> None:
    """The one DEBUG record of a caller refused at once for its place in line."""
    log.debug(
        "%s token expected in %.2f s, after the caller's deadline in %.2f s (%d waiting "
        "ahead): refused at once",
        endpoint,
        expected,
        allowed,
        ahead,
        extra={"endpoint": endpoint, "expected_wait": expected, "deadline_in": allowed},
    )


def _rate_window(state: EndpointRate, now: float) -> RateWindow | None:
    """``state``'s window now (``None`` without a limit)."""
    state.recover(now)
    if state.limit is None:
        return None
    state.prune(now)
    left = state.allowance_left(now)
    return RateWindow(
        limit=state.limit,
        window=state.window,
        grants=tuple(state.log),
        allowance=left,
        allowance_until=state.allowance_until if left is not None else None,
        others=state.others_now(now),
    )


# --------------------------------------------------------------------------- local budget


@attrs.define
class _Line:
    """An endpoint's line played forward (``plan``) over its first ``length`` waiters, as
    of ``version`` (see ``LocalBudget._line``)."""

    version: tuple[int, int]
    length: int
    plan: LinePlan


class LocalBudget(RequestBudget):
    """The in-process :class:`RequestBudget`: per-endpoint rate limits, pauses, failure window.

    Args:
        clock: where time is read and how waiting is done.
        rates: the rate limit of each endpoint; other endpoints are unlimited (but still
            subject to pauses and the failure window).
        max_retry_after: cap, in seconds, on any pause read from response headers.
        failure_window: ``(limit, seconds)``: the server's error budget (over ``limit``
            failed requests in ``seconds`` locks the key).
        failure_margin: stop sending once ``limit - failure_margin`` failures lie in the
            window, leaving room for requests already in flight.
        pool: one more limit over ``pooled_endpoints`` together (say Venice's "Audio: 60
            requests/min" for the whole key), on top of each endpoint's own; ``None``: none.
            An assumed one (a default of :class:`~venice_audio_async.RateLimits`) is dropped
            once two of its endpoints state different limits (see :meth:`learn`).
        pooled_endpoints: the endpoints ``pool`` covers (default: every audio endpoint).

    Raises:
        ValueError: a non-positive ``max_retry_after`` or window, or
            ``limit - failure_margin < 1``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        clock: Clock,
        rates: Mapping[str, RateLimit],
        max_retry_after: float = 60.0,
        failure_window: tuple[int, float] = (20, 30.0),
        failure_margin: int = 5,
        pool: RateLimit | None = None,
        pooled_endpoints: Collection[str] = AUDIO_ENDPOINTS,
    ) -> None:
        limit, window = failure_window
        # 0 is allowed: RetryPolicy.testing() never waits, not even for Retry-After.
        check_number("max_retry_after", max_retry_after, inclusive=True)
        check_number("failure window seconds", window)
        if limit - failure_margin < 1:
            raise ValueError(
                f"failure_window limit minus failure_margin must be >= 1, "
                f"got {limit} - {failure_margin}"
            )
        self._clock = clock
        self._max_retry_after = float(max_retry_after)
        self._failure_threshold = limit - failure_margin
        self._failure_window = float(window)
        self._endpoints: dict[str, EndpointRate] = {
            name: EndpointRate(name, rate) for name, rate in rates.items()
        }
        # One limit over several endpoints together (the key's audio RPM), on top of theirs.
        self._pool = EndpointRate("pool", pool) if pool is not None else None
        self._pooled = frozenset(pooled_endpoints)
        # An assumed pool the API's stated figures refuted: none assumed again.
        self._pool_refuted = False
        self._paused_until = -math.inf
        self._pause_reason: str | None = None
        self._paused_seconds = 0.0
        self._failures: deque[float] = deque()
        self._failure_count = 0
        self._failure_paused_until = -math.inf
        self._failure_paused_seconds = 0.0
        self._granted = 0
        self._rate_limited = 0
        self._consecutive_429 = 0
        #: Models whose queue calls are held (an overloaded model's 429), until when.
        self._model_held: dict[str, float] = {}
        # Each endpoint's line played forward (see _line), and what makes it stale: any
        # change of the rules (_changes) or of that endpoint's line (_line_changes).
        self._lines: dict[str, _Line] = {}
        self._changes = 0
        self._line_changes: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"LocalBudget(endpoints={sorted(self._endpoints)!r})"

    def _endpoint(self, name: str) -> EndpointRate:
        state = self._endpoints.get(name)
        if state is None:
            state = self._endpoints[name] = EndpointRate(name, None)
        return state

    def _pool_of(self, state: EndpointRate) -> EndpointRate | None:
        return self._pool if state.name in self._pooled else None

    def _ready_at(self, state: EndpointRate, now: float) -> float:
        t = max(now, self._paused_until, self._failure_paused_until, state.paused_until)
        t = state.rate_ready(t)
        pool = self._pool_of(state)
        if pool is not None:
            # Each rule only gets easier as time passes, so one more pass settles both.
            t = state.rate_ready(pool.rate_ready(t, self._queue_reserve(state, now)))
        return t

    def _queue_reserve(self, state: EndpointRate, now: float) -> int:
        """The pool's grants kept from ``state`` for the queue calls waiting
        (:func:`~._rate.endpoint_rate.queue_reserve`)."""
        if state.name == "queue":
            return 0
        queue = self._endpoints.get("queue")
        if queue is None or queue.name not in self._pooled:
            return 0
        waiting = sum(1 for waiter in queue.waiters if not waiter.cancelled)
        if not waiting:
            return 0
        room = None
        if queue.limit is not None:
            queue.prune(now)
            room = queue.limit - len(queue.log)
        return queue_reserve(waiting, room)

    def set_pool(self, pool: RateLimit | None) -> None:
        """Put the pooled endpoints under ``pool`` from now on (``None``: no pooled limit),
        as a session does at open with the key's limits; grants so far still count. An
        assumed pool is not taken once one was refuted (see :meth:`learn`)."""
        if pool is not None and self._pool_refuted and is_assumed(pool.per_minute):
            pool = None
        old = self._pool
        self._pool = EndpointRate("pool", pool) if pool is not None else None
        if old is not None and self._pool is not None:
            self._pool.log = deque(old.log)
            self._pool.granted = old.granted
            self._pool.stated_by = dict(old.stated_by)
        self._changes += 1
        self._look_again()

    def _grant(self, state: EndpointRate, now: float) -> None:
        state.grant(now)
        pool = self._pool_of(state)
        if pool is not None:
            pool.grant(now)
            self._changes += 1  # every pooled endpoint's line moves
        else:
            self._line_changes[state.name] = self._line_changes.get(state.name, 0) + 1
        self._granted += 1

    @staticmethod
    def _promote(state: EndpointRate) -> None:
        waiters = state.waiters
        while waiters and waiters[0].cancelled:
            waiters.popleft()
        if waiters:
            waiters[0].event.set()

    # ------------------------------------------------------------------ taking tokens

    async def acquire(
        self, endpoint: str, *, deadline_at: float | None = None, model: str | None = None
    ) -> bool:
        """Wait until one request to ``endpoint`` may be sent, then take the token.

        A ``queue`` call for ``model`` first waits out that model's hold (an overloaded
        model's 429). Waiters are served first come, first served. Cancelling a waiter takes
        no token and lets the next one move up. With ``deadline_at`` (a ``clock.monotonic()``
        reading), give up and return ``False`` as soon as the token would come later than
        that: at once when the caller's place in line already says so (counting ahead of it
        only the waiters that can make their own deadlines), or as soon as a pause or a
        lowered limit pushes it past (every waiter with a deadline looks again then).
        """
        state = self._endpoint(endpoint)
        clock = self._clock
        await anyio.lowlevel.checkpoint_if_cancelled()
        if (
            model is not None
            and endpoint == "queue"
            and self._model_held
            and not await wait_out_model_hold(self._model_held, model, clock, deadline_at)
        ):
            return False
        now = clock.monotonic()
        if not state.waiters:
            ready = self._ready_at(state, now)
            if reached(ready, now):
                self._grant(state, now)
                return True
            if deadline_at is not None and not reached(ready, deadline_at):
                log_too_late(endpoint, ready - now, deadline_at - now, 0)
                return False
        elif deadline_at is not None:
            line = self._line(state, now)
            eta = line.plan.ready()
            if not reached(eta, deadline_at):
                log_too_late(endpoint, eta - now, deadline_at - now, len(state.waiters))
                return False
            line.plan.take(eta)  # its place, for the next caller to join
            line.length += 1
        waiter = Waiter(deadline_at)
        state.waiters.append(waiter)
        state.waiting += 1
        granted = False
        try:
            while state.waiters[0] is not waiter:
                if deadline_at is None:
                    await waiter.event.wait()
                    continue
                await clock.wait(waiter.event, deadline_at - now)
                if state.waiters[0] is waiter:
                    break
                # Woken by the deadline, or to look again after a pause or a lowered limit.
                now = clock.monotonic()
                if reached(deadline_at, now):
                    return False  # the deadline passed before the others were served
                if not reached(self._eta(state, now, deadline_at, upto=waiter), deadline_at):
                    return False
                waiter.event = anyio.Event()
            while True:
                now = clock.monotonic()
                ready = self._ready_at(state, now)
                if reached(ready, now):
                    break
                if deadline_at is not None and not reached(ready, deadline_at):
                    return False
                if deadline_at is None:
                    await clock.sleep(ready - now)
                else:  # woken early to look again (see _look_again)
                    waiter.event = anyio.Event()
                    await clock.wait(waiter.event, ready - now)
            self._grant(state, now)
            granted = True
            return True
        finally:
            state.waiting -= 1
            if not granted:  # it leaves the line: the places behind it move up
                self._line_changes[state.name] = self._line_changes.get(state.name, 0) + 1
            if state.waiters and state.waiters[0] is waiter:
                state.waiters.popleft()
                self._promote(state)
            elif not granted:
                waiter.cancelled = True

    def _what_if(self, state: EndpointRate, now: float) -> LinePlan:
        """A plan of ``state``'s rules from now on, nobody in line yet."""
        floor = max(now, self._paused_until, self._failure_paused_until, state.paused_until)
        pool = self._pool_of(state)
        rates = [state.what_if()] if pool is None else [state.what_if(), pool.what_if()]
        return LinePlan(rates, floor)

    def _line(self, state: EndpointRate, now: float) -> _Line:
        """``state``'s line played forward, for a caller joining its back.

        Kept between callers: one joining a line nothing changed in since (no grant, no
        answer learnt, nobody left, the first token still ahead) costs O(1), so a burst of
        N callers costs O(N), not O(N^2). Otherwise it is played again, O(line).
        """
        version = (self._changes, self._line_changes.get(state.name, 0))
        line = self._lines.get(state.name)
        if (
            line is not None
            and line.version == version
            and line.length == len(state.waiters)
            and now <= line.plan.first
        ):
            return line
        plan = self._what_if(state, now)
        for waiter in state.waiters:
            if not waiter.cancelled:
                plan.play(waiter.deadline)
        line = self._lines[state.name] = _Line(version, len(state.waiters), plan)
        return line

    def _eta(self, state: EndpointRate, now: float, stop_at: float, *, upto: Waiter) -> float:
        """When the token of ``upto``, a waiter in ``state``'s line, would come: the rules
        played forward over the waiters ahead of it, skipping those that will give up;
        ``math.inf`` once it is known to lie past ``stop_at``."""
        plan = self._what_if(state, now)
        rates, floor = plan.rates, plan.floor
        ahead: list[float | None] = []
        for waiter in state.waiters:
            if waiter is upto:
                break
            if not waiter.cancelled:
                ahead.append(waiter.deadline)
        return token_eta(rates, floor, ahead, stop_at)

    def _look_again(self) -> None:
        """Wake every waiter with a deadline to check its place again (the rules got
        stricter: a pause, a lowered limit); one that can no longer make it gives up."""
        for state in self._endpoints.values():
            for waiter in state.waiters:
                if waiter.deadline is not None and not waiter.cancelled:
                    waiter.event.set()

    def _strictness(self, state: EndpointRate) -> tuple[object, ...]:
        """What, when it changes, may push the waiters' tokens later."""
        pool = self._pool_of(state)
        return (
            self._paused_until,
            self._failure_paused_until,
            state.paused_until,
            state.limit,
            pool.limit if pool is not None else None,
        )

    def try_acquire_now(self, endpoint: str) -> bool:
        """Take a token for ``endpoint`` if one is free now and nobody is waiting for one."""
        state = self._endpoint(endpoint)
        if state.waiters:
            return False
        now = self._clock.monotonic()
        if not reached(self._ready_at(state, now), now):
            return False
        self._grant(state, now)
        return True

    def session_paused(self) -> bool:
        """Whether every request is held right now (a 429's pause, the failed-request
        window): what ``statistics()`` reports as ``paused_until`` or
        ``failure_paused_until``, without taking a snapshot.
        """
        now = self._clock.monotonic()
        return self._paused_until > now or self._failure_paused_until > now

    def next_available(self, endpoint: str) -> float:
        """The ``clock.monotonic()`` time at which the next token for ``endpoint`` is free.

        That is ``now`` when one is free. Tasks already waiting take it first (see
        ``statistics().endpoints[endpoint].waiting``).
        """
        state = self._endpoint(endpoint)
        now = self._clock.monotonic()
        return max(now, self._ready_at(state, now))

    def window(self, endpoint: str) -> RateWindow | None:
        """The endpoint's rate window now; ``None`` for an endpoint without a limit.

        For an endpoint under the pooled limit too, the one with fewer free grants now.
        """
        state, now = self._endpoint(endpoint), self._clock.monotonic()
        pool = self._pool_of(state)
        pooled = _rate_window(pool, now) if pool is not None else None
        return tighter_window(_rate_window(state, now), pooled, now)

    # ------------------------------------------------------------------ learning

    def _pause_session_until(self, until: float, now: float, reason: str) -> bool:
        """Extend the session-wide pause; whether it was extended."""
        if until <= self._paused_until:
            return False
        self._paused_seconds += until - max(self._paused_until, now)
        self._paused_until = until
        self._pause_reason = reason
        return True

    async def record_response(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        """Learn from an answer to a request to ``endpoint`` (never waits): :meth:`learn`."""
        self.learn(endpoint, status, headers, message=message, model=model)

    def record_response_now(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> bool:
        """Learn from an answer at once (:meth:`learn`): an in-process budget always can."""
        self.learn(endpoint, status, headers, message=message, model=model)
        return True

    def learn(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        """Learn from an answer to a request to ``endpoint``, at once.

        * 2xx: resets the count of consecutive 429s.
        * 429: pauses every endpoint for :func:`retry_delay_from_headers` seconds (capped
          at ``max_retry_after``); without a usable header, 5 s doubling with each
          consecutive 429, up to the cap. An overloaded model's 429 (told by ``message``)
          holds only that ``model``'s queue calls instead.
        * A rate-limit 429 (not the error budget's, not an overloaded model's) also lowers
          ``endpoint``'s limit, and the pool's if ``endpoint`` is under it, with the window
          starting at the 429 (:class:`~._rate.endpoint_rate.EndpointRate`).
        * ``x-ratelimit-limit-requests`` (any status): ``endpoint``'s limit at once (up or
          down; a limit the user set is only capped). An assumed pool rises to it; once two
          of its endpoints state different figures it is dropped for good (logged once at
          INFO): each endpoint keeps its own limit, as with no pool.
        * ``x-ratelimit-remaining-requests`` with ``x-ratelimit-reset-requests``: no more
          than that many grants until the reset; at 0 (any status) ``endpoint`` pauses until
          the reset (capped), or one pacing interval without it.
        * ``x-ratelimit-remaining`` of 0 (the failed-request budget): pauses every endpoint
          until ``x-ratelimit-resets`` (capped), or 30 s without it.
        * status >= 400, or below 100 (0 stands for a transport failure): one failure in
          the sliding failure window.
        """
        state = self._endpoint(endpoint)
        if teaches_nothing(status, headers):  # most answers: a success stating nothing
            self._consecutive_429 = 0
            return
        now = self._clock.monotonic()
        self._changes += 1
        before = self._strictness(state)
        if 200 <= status < 300:
            self._consecutive_429 = 0
        if status == 429:
            self._rate_limited += 1
            state.rate_limited += 1
            self._consecutive_429 += 1
        lesson = read_signals(
            endpoint,
            status,
            headers,
            message=message,
            model=model,
            now_epoch=self._clock.time(),
            cap=self._max_retry_after,
            consecutive_429=self._consecutive_429,
            interval=state.interval if state.limit is not None else None,
        )
        if lesson.rate_limited:
            state.rate_limited_at(now)
            pool = self._pool_of(state)
            if pool is not None:
                pool.rate_limited_at(now)
        if lesson.model_pause is not None:
            self._hold_model(*lesson.model_pause, now)
        if lesson.pause is not None:
            delay, reason = lesson.pause
            if self._pause_session_until(now + delay, now, reason):
                if not lesson.locked_out:
                    log.info(
                        "429 from %s: pausing every request for %.1f s",
                        endpoint,
                        delay,
                        extra={"endpoint": endpoint, "status": 429, "pause": delay},
                    )
                else:
                    log.warning(
                        "the API's failed-request budget is used up (key locked out): "
                        "pausing every request for %.1f s",
                        delay,
                        extra={"endpoint": endpoint, "status": status, "pause": delay},
                    )
        if lesson.stated is not None:
            state.state_limit(lesson.stated, now)
            pool = self._pool_of(state)
            if pool is not None:
                refuted_by = pool.state_pool_limit(endpoint, lesson.stated, now)
                if refuted_by is not None:
                    self._drop_pool(pool, refuted_by, (endpoint, lesson.stated))
        if lesson.allowance is not None:
            remaining, until = lesson.allowance
            state.allow(remaining, now + until)
        if lesson.stated is not None and lesson.remaining is not None:
            state.observe_use(lesson.stated, lesson.remaining, now, self._pool_of(state))
        if lesson.endpoint_pause is not None:
            until = now + lesson.endpoint_pause
            if until > state.paused_until:
                state.paused_seconds += until - max(state.paused_until, now)
                state.paused_until = until
                log.debug(
                    "%s has no requests left: pausing it for %.2f s",
                    endpoint,
                    lesson.endpoint_pause,
                )
        if lesson.failure:
            self._add_failure(now)
        if self._strictness(state) != before:
            self._look_again()

    def _drop_pool(
        self, pool: EndpointRate, first: tuple[str, int], second: tuple[str, int]
    ) -> None:
        """An assumed pool refuted by two different stated figures: none from now on."""
        self._pool = None
        self._pool_refuted = True
        log.info(
            "%s",
            pool_refuted_message(first, second, pool.configured or 0),
            extra={"endpoint": second[0], "pool": pool.configured},
        )

    def _hold_model(self, delay: float, model: str, now: float) -> None:
        if hold_model(self._model_held, model, now + delay):
            log.info(
                "429: %s is overloaded; holding its queue calls for %.1f s (other requests go on)",
                model,
                delay,
                extra={"model": model, "status": 429, "pause": delay},
            )

    def _prune_failures(self, now: float) -> None:
        failures, window = self._failures, self._failure_window
        while failures and reached(failures[0] + window, now):
            failures.popleft()

    def _add_failure(self, now: float) -> None:
        self._failure_count += 1
        self._prune_failures(now)
        self._failures.append(now)
        threshold = self._failure_threshold
        if len(self._failures) >= threshold:
            # Wait until the window holds threshold - 1 failures again.
            until = self._failures[-threshold] + self._failure_window
            if until > self._failure_paused_until:
                if self._failure_paused_until <= now:  # a new pause, not an extension
                    log.warning(
                        "%d failed requests in the last %g s: holding new requests for %.1f s "
                        "so the API does not lock the key",
                        len(self._failures),
                        self._failure_window,
                        until - now,
                        extra={"failures": len(self._failures), "pause": until - now},
                    )
                self._failure_paused_seconds += until - max(self._failure_paused_until, now)
                self._failure_paused_until = until

    def pause(self, seconds: float, *, reason: str) -> None:
        """Pause every endpoint for ``seconds`` (extends, never shortens, a current pause).

        (LocalBudget's own: not part of :class:`RequestBudget`.)

        Raises:
            ValueError: ``seconds`` is not a number.
        """
        if math.isnan(seconds):
            raise ValueError("seconds must be a number")
        if seconds <= 0:
            return
        now = self._clock.monotonic()
        if self._pause_session_until(now + seconds, now, reason):
            self._changes += 1
            self._look_again()

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot: tokens, grants, waiters, 429s, pauses and failures."""
        now = self._clock.monotonic()
        figures: list[EndpointFigures] = []
        for name, state in self._endpoints.items():
            state.prune(now)
            figures.append(
                EndpointFigures(
                    endpoint=name,
                    tokens=state.tokens(now),
                    used=len(state.log),
                    limit=state.limit,
                    granted=state.granted,
                    waiting=state.waiting,
                    rate_limited=state.rate_limited,
                    paused_seconds=state.paused_seconds,
                    paused_until=state.paused_until,
                )
            )
        self._prune_failures(now)
        return budget_statistics(
            now,
            figures,
            granted=self._granted,
            rate_limited=self._rate_limited,
            paused_seconds=self._paused_seconds,
            paused_until=self._paused_until,
            pause_reason=self._pause_reason,
            failures=self._failure_count,
            failures_in_window=len(self._failures),
            failure_paused_until=self._failure_paused_until,
            failure_paused_seconds=self._failure_paused_seconds,
        )
