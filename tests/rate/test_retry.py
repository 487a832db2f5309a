"""The one retry rule: verdicts per endpoint, the loop that applies them, injected jitter."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

import venice_audio_async as v
from tests.conftest import make_session
from venice_audio_async._core.config import RateLimit
from venice_audio_async._rate.budget import LocalBudget
from venice_audio_async._rate.limiter import RequestLimiter
from venice_audio_async._rate.retry import (
    PollVerdict,
    Retrier,
    Verdict,
    decide,
    judge_poll,
    queue_answer_lost,
)
from venice_audio_async.testing import FakeServer, Fault, ManualClock

pytestmark = pytest.mark.anyio

POLICY = v.RetryPolicy(attempts=3, initial_backoff=1.0, jitter=0.5)


def _status(cls: type[v.APIStatusError], status: int) -> v.APIStatusError:
    return cls("x", status_code=status)


def _limited() -> v.RateLimitError:
    return v.RateLimitError("slow down", status_code=429)


@pytest.mark.parametrize("endpoint", ["queue", "retrieve", "quote", "models", "complete"])
def test_a_429_waits_for_the_budget_on_every_endpoint(endpoint: str) -> None:
    """A 429 is WAIT everywhere, queue included: the job was not created."""
    assert decide(endpoint, _limited(), POLICY) is Verdict.WAIT


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_status(v.ServiceUnavailableError, 503), Verdict.RETRY),
        (_status(v.ServerError, 502), Verdict.RAISE),
        (_status(v.ServerError, 504), Verdict.RAISE),
        (_status(v.InferenceFailedError, 500), Verdict.RAISE),
        (v.ConnectError("refused", endpoint="queue"), Verdict.RETRY),
        (v.ConnectionDropped("dropped", endpoint="queue"), Verdict.RAISE),
        (v.RequestTimeout("slow", endpoint="queue", request_sent=False), Verdict.RETRY),
        (_status(v.BadRequestError, 400), Verdict.RAISE),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, Exception) else x.value,
)
def test_queue_is_repeated_only_when_no_job_can_exist(
    error: v.VeniceError, verdict: Verdict
) -> None:
    """queue: 503 and never-sent requests are retried; lost answers and 502/504 are raised."""
    assert decide("queue", error, POLICY) is verdict


def test_lost_queue_answers_are_retried_only_when_configured() -> None:
    """retry_queue_on_ambiguous_failure turns a lost answer into a retry (not a 502)."""
    policy = v.RetryPolicy(retry_queue_on_ambiguous_failure=True)
    assert decide("queue", v.ConnectionDropped("x"), policy) is Verdict.RETRY
    assert decide("queue", _status(v.ServerError, 502), policy) is Verdict.RAISE


def test_queue_answer_lost_names_the_maybe_billed_failures() -> None:
    """A sent request without an answer, or a gateway's 502/504, may have billed."""
    assert queue_answer_lost(v.ConnectionDropped("x"))
    assert queue_answer_lost(_status(v.ServerError, 504))
    assert not queue_answer_lost(v.ConnectError("x"))
    assert not queue_answer_lost(_status(v.ServiceUnavailableError, 503))


@pytest.mark.parametrize("endpoint", ["quote", "models", "complete", "retrieve"])
def test_idempotent_requests_retry_transient_failures(endpoint: str) -> None:
    """5xx and transport failures are retried; a refusal or an oversized answer is not."""
    assert decide(endpoint, _status(v.InferenceFailedError, 500), POLICY) is Verdict.RETRY
    assert decide(endpoint, v.ConnectionDropped("x"), POLICY) is Verdict.RETRY
    assert decide(endpoint, v.ResponseTooLarge("big"), POLICY) is Verdict.RAISE
    assert decide(endpoint, _status(v.NotFoundError, 404), POLICY) is Verdict.RAISE


def test_polls_also_retry_408_and_425() -> None:
    """retrieve alone treats 408 and 425 as an invitation to try again."""
    for status in (408, 425):
        assert decide("retrieve", _status(v.APIStatusError, status), POLICY) is Verdict.RETRY
        assert decide("quote", _status(v.APIStatusError, status), POLICY) is Verdict.RAISE


class _Script:
    """A send() that raises the scripted errors in turn, then answers "ok"."""

    def __init__(self, *errors: v.VeniceError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _retrier(clock: ManualClock, acquired: list[str], **options: object) -> Retrier:
    async def acquire(endpoint: str) -> bool:
        acquired.append(endpoint)
        return True

    rng = options.pop("rng", random.Random(7))
    assert isinstance(rng, random.Random)
    return Retrier(acquire=acquire, policy=POLICY, clock=clock, rng=rng)


async def _run(retrier: Retrier, clock: ManualClock, send: Callable[[], Awaitable[str]]) -> str:
    """Run one call, advancing the virtual clock through its backoff sleeps."""
    result: list[str] = []
    failure: list[v.VeniceError] = []

    async def call() -> None:
        try:
            result.append(await retrier.call("quote", send, limiter=RequestLimiter(1)))
        except v.VeniceError as error:
            failure.append(error)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        while not result and not failure:
            await anyio.lowlevel.checkpoint()
            clock.advance_to_next()
    if failure:
        raise failure[0]
    return result[0]


async def test_429s_cost_no_attempt_and_take_a_token_each() -> None:
    """Five 429s then an answer: with 3 attempts it still succeeds, never sleeping itself."""
    clock, acquired = ManualClock(), list[str]()
    send = _Script(*[_limited() for _ in range(5)])
    assert await _run(_retrier(clock, acquired), clock, send) == "ok"
    assert send.calls == 6
    assert acquired == ["quote"] * 6
    assert clock.monotonic() == 0.0  # the budget does the waiting, not the loop


async def test_a_429_storm_ends_in_the_error() -> None:
    """Twenty 429s in a row raise the RateLimitError."""
    clock, acquired = ManualClock(), list[str]()
    send = _Script(*[_limited() for _ in range(25)])
    with pytest.raises(v.RateLimitError):
        await _run(_retrier(clock, acquired), clock, send)
    assert send.calls == 20


async def test_transient_failures_cost_attempts_and_back_off() -> None:
    """Three 503s with 3 attempts: two backoffs, then the third error is raised."""
    clock, acquired = ManualClock(), list[str]()
    send = _Script(*[_status(v.ServiceUnavailableError, 503) for _ in range(3)])
    with pytest.raises(v.ServiceUnavailableError):
        await _run(_retrier(clock, acquired), clock, send)
    assert send.calls == 3
    assert clock.monotonic() > 0.0


async def test_backoff_jitter_comes_from_the_injected_generator() -> None:
    """Two retriers with equal seeds wait exactly as long; the draws are not global."""
    waits = []
    for _ in range(2):
        clock, acquired = ManualClock(), list[str]()
        send = _Script(_status(v.ServerError, 500), _status(v.ServerError, 500))
        random.seed(0)  # must not matter
        await _run(_retrier(clock, acquired, rng=random.Random(42)), clock, send)
        waits.append(clock.monotonic())
    assert waits[0] == waits[1]
    rng = random.Random(42)
    expected = POLICY.backoff(1, rng.random()) + POLICY.backoff(2, rng.random())
    assert waits[0] == pytest.approx(expected)


async def test_a_queue_429_costs_no_attempt(fake_server: FakeServer) -> None:
    """With a single attempt allowed, queue still gets through two 429s: none is an attempt."""
    async with make_session(fake_server, retry=v.RetryPolicy.testing(attempts=1)) as session:
        fake_server.inject("queue", Fault.status(429, retry_after=1), times=2)
        job = await session.submit("stable-audio-25", "a patient request")
    assert job.queue_id in fake_server.jobs
    assert fake_server.count("queue") == 3
    assert len(fake_server.jobs) == 1


async def test_a_quote_429_costs_no_attempt(fake_server: FakeServer) -> None:
    """quote, with one attempt, waits out a 429 and answers."""
    async with make_session(fake_server, retry=v.RetryPolicy.testing(attempts=1)) as session:
        fake_server.inject("quote", Fault.status(429, retry_after=1))
        quote = await session.quote("stable-audio-25", duration_seconds=30)
    assert quote.quote > 0
    assert fake_server.count("quote") == 2


def _json(cls: type[v.APIStatusError], status: int) -> v.APIStatusError:
    return cls("x", status_code=status, body={"error": "x"})


_HTML = "<html><body>502 Bad Gateway</body></html>"


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_limited(), PollVerdict.WAIT),
        (_json(v.BadRequestError, 400), PollVerdict.FINAL),
        (_json(v.InvalidQueueIdError, 400), PollVerdict.FINAL),
        (_json(v.MediaNotFoundError, 404), PollVerdict.FINAL),
        (_json(v.ContentPolicyError, 422), PollVerdict.FINAL),
        (v.ResponseTooLarge("big"), PollVerdict.FINAL),
        (_json(v.InferenceFailedError, 500), PollVerdict.REPEAT),
        (_json(v.ServiceUnavailableError, 503), PollVerdict.REPEAT),
        (_json(v.ServerError, 502), PollVerdict.UNREACHED),
        (_json(v.ServerError, 504), PollVerdict.UNREACHED),
        (_json(v.APIStatusError, 408), PollVerdict.UNREACHED),
        (v.ServerError("x", status_code=502, body=_HTML), PollVerdict.UNREACHED),
        (v.InferenceFailedError("x", status_code=500, body=_HTML), PollVerdict.UNREACHED),
        (v.ServiceUnavailableError("x", status_code=503), PollVerdict.UNREACHED),  # empty body
        (v.NotFoundError("x", status_code=404, body=_HTML), PollVerdict.UNREACHED),
        (v.ConnectionDropped("x", endpoint="retrieve"), PollVerdict.UNREACHED),
        (v.RequestTimeout("x", endpoint="retrieve"), PollVerdict.UNREACHED),
        (v.TruncatedResponse("x", endpoint="retrieve"), PollVerdict.UNREACHED),
        (v.MalformedResponse("x", endpoint="retrieve"), PollVerdict.UNREACHED),
        (v.ConnectError("x", endpoint="retrieve"), PollVerdict.UNREACHED),
        (_json(v.AuthenticationError, 401), PollVerdict.KEY_REFUSED),
        (_json(v.PaymentRequiredError, 402), PollVerdict.KEY_REFUSED),
        (v.PermissionDeniedError("x", status_code=403, body=_HTML), PollVerdict.KEY_REFUSED),
    ],
    ids=lambda x: (
        f"{type(x).__name__}-{getattr(x, 'body', None) is not None}"
        if isinstance(x, Exception)
        else x.value
    ),
)
def test_only_the_apis_verdict_ends_a_polled_job(
    error: v.VeniceError, verdict: PollVerdict
) -> None:
    """A poll's failure ends its job only when the API's JSON says so; transport trouble,
    a proxy's HTML or empty body and a gateway's 502 / 504 are no verdict."""
    assert judge_poll(error) is verdict


def test_a_poll_backs_off_up_to_max_backoff() -> None:
    """The poller's waits grow with the failures in a row and stop at max_backoff; a 429
    waits 0 s (the budget holds the pause)."""
    retrier = _retrier(ManualClock(), [])
    dropped = v.ConnectError("refused", endpoint="retrieve")
    assert retrier.poll_again_in(_limited(), 2, queue_id="q", unreached=None) == 0.0
    first = retrier.poll_again_in(dropped, 0, queue_id="q", unreached=0.0)
    assert POLICY.initial_backoff * (1 - POLICY.jitter) <= first <= POLICY.initial_backoff * 1.5
    late = retrier.poll_again_in(dropped, 50, queue_id="q", unreached=600.0)
    assert late <= POLICY.max_backoff * (1 + POLICY.jitter / 2)


async def _settle() -> None:
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


async def test_a_cancel_that_races_the_token_sends_nothing() -> None:
    """A caller cancelled in the loop pass its token arrives in (a ``generate_many`` block
    left meanwhile) sends nothing: the send is shielded once it starts, so the check for
    the cancel must come first. Without it that request went out after the exit."""
    clock = ManualClock()
    budget = LocalBudget(clock=clock, rates={"queue": RateLimit(per_minute=60.0, burst=1)})
    assert budget.try_acquire_now("queue")  # the burst is spent: the next token is 1 s away
    retrier = Retrier(acquire=budget.acquire, policy=POLICY, clock=clock, rng=random.Random(0))
    sent: list[float] = []

    async def send() -> str:
        with anyio.CancelScope(shield=True):  # as the queue call is: never cut short
            sent.append(clock.monotonic())
            await anyio.lowlevel.checkpoint()
        return "job"

    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            await retrier.call("queue", send, limiter=RequestLimiter(4))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await _settle()
        assert budget.statistics().endpoints["queue"].waiting == 1
        clock.advance(budget.next_available("queue"))  # the token is due: its waiter wakes ...
        scope.cancel()  # ... and cancelled before it runs again
        await _settle()
    assert sent == []
    assert scope.cancelled_caught
