"""When to try a request again, and how long to wait first: the one place that decides.

Every failed request goes through :func:`decide`, which gives one of three verdicts:

* ``WAIT``: a 429, on any endpoint. The request budget has already paused the whole
  session as the answer's headers say (``Retry-After``, the reset headers), so the request
  simply waits for its next token. It costs no attempt. On ``queue`` too: a 429 means the
  job was not created, so sending it again cannot bill twice.
* ``RETRY``: a transient failure (5xx, a dropped or timed-out answer) of a request that is
  safe to repeat. It costs one of ``RetryPolicy.attempts`` and waits an exponential backoff
  with jitter first. ``queue`` is repeated only when no job can exist: 503 (at capacity),
  or a request that certainly never left (connect failed); an answer lost after sending,
  or a 502/504 from a gateway (the origin may have created the job), is raised, and turned
  into :class:`~venice_audio_async.QueueOutcomeUnknown` by the submit path, unless
  ``RetryPolicy.retry_queue_on_ambiguous_failure`` says otherwise.
* ``RAISE``: anything else (the request was refused, or repeating it cannot help).

:class:`Retrier` runs that loop for one request (``models``, ``quote``, ``complete``,
``queue``). A poll is judged by :func:`judge_poll` instead, since what matters there is
whether the *API* spoke about the job: only its verdict ends a job (a Venice JSON error
with 400 / 404 / 422 at once, 500 / 503 once repeated ``attempts`` times); a poll that
failed in transit says nothing about the job, which is polled again with backoff until
``RetryPolicy.unreachable_after``; 401 / 402 / 403 refuse the key, not the job. The
scheduler applies these verdicts by rescheduling the job instead of holding a task.

The header arithmetic the budget uses to size a pause (``Retry-After``, the reset headers)
is in :mod:`._http.headers`.
"""

from __future__ import annotations

import copy
import enum
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import anyio.lowlevel

from .._core.clock import Clock
from .._core.config import RetryPolicy
from .._core.errors import (
    APIStatusError,
    AuthenticationError,
    JobDeadlineExceeded,
    JobUnreachable,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    ResponseTooLarge,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    VeniceError,
)
from .._core.logging import attempt_context, log
from .budget import takes_keyword
from .limiter import RequestLimiter

__all__ = [
    "PollVerdict",
    "Retrier",
    "TokenTooLate",
    "Verdict",
    "decide",
    "is_transient",
    "judge_poll",
    "leaves_job_resumable",
    "queue_answer_lost",
    "queue_not_created",
]

T = TypeVar("T")

#: A 429 storm would otherwise hold one request forever; past this many in a row it raises.
_MAX_RATE_LIMITED = 20
#: Gateway errors after which the origin may have created (and billed) a queued job.
_GATEWAY_STATUSES = (502, 504)
#: Statuses that invite a poll to be repeated although they are not 5xx.
_RETRY_POLL_STATUSES = (408, 425)


class Verdict(enum.Enum):
    """What to do after a request failed."""

    RETRY = "retry"  # back off, then send again; costs an attempt
    WAIT = "wait"  # a 429: send again once the budget allows; costs no attempt
    RAISE = "raise"


# --------------------------------------------------------------------------- the decision


def is_transient(error: VeniceError) -> bool:
    """Whether repeating the same request may succeed (5xx, 429, transport failures).

    An oversized body is a transport error that a retry would only download again.
    """
    if isinstance(error, ResponseTooLarge):
        return False
    return isinstance(error, (ServerError, RateLimitError, TransportError))


def queue_answer_lost(error: VeniceError) -> bool:
    """Whether a failed ``queue`` may still have created (and billed) its job."""
    if isinstance(error, ServerError):
        return error.status_code in _GATEWAY_STATUSES
    return isinstance(error, TransportError) and error.request_sent


def queue_not_created(error: VeniceError) -> bool:
    """Whether a failed ``queue`` certainly created no job: a 429, a 503 (at capacity), or
    a request that never left. Sending it again then cannot bill twice."""
    if isinstance(error, (RateLimitError, ServiceUnavailableError)):
        return True
    return isinstance(error, TransportError) and not error.request_sent


def _decide_queue(error: VeniceError, policy: RetryPolicy) -> Verdict:
    if isinstance(error, ServerError) and error.status_code in _GATEWAY_STATUSES:
        return Verdict.RAISE  # the origin may have created it before the gateway failed
    if isinstance(error, ServiceUnavailableError):
        return Verdict.RETRY  # at capacity: nothing was created
    if isinstance(error, TransportError):
        if not error.request_sent:
            return Verdict.RETRY
        if policy.retry_queue_on_ambiguous_failure:
            log.warning("queue answer lost; retrying as configured (may double-bill)")
            return Verdict.RETRY
    return Verdict.RAISE


def decide(endpoint: str, error: VeniceError, policy: RetryPolicy) -> Verdict:
    """The verdict on a failed request to ``endpoint`` (see the module docstring)."""
    if isinstance(error, RateLimitError):
        return Verdict.WAIT
    if endpoint == "queue":
        return _decide_queue(error, policy)
    if is_transient(error):
        return Verdict.RETRY
    if (
        endpoint == "retrieve"
        and isinstance(error, APIStatusError)
        and error.status_code in _RETRY_POLL_STATUSES
    ):
        return Verdict.RETRY
    return Verdict.RAISE


class PollVerdict(enum.Enum):
    """What a failed poll says about its job (see :func:`judge_poll`)."""

    WAIT = "wait"  # a 429: poll again once the budget allows; costs no attempt
    FINAL = "final"  # the API's verdict on the job: it ends failed now
    REPEAT = "repeat"  # a 500 / 503 from the API: its verdict once repeated ``attempts`` times
    UNREACHED = "unreached"  # no word from the API: poll again until ``unreachable_after``
    KEY_REFUSED = "key refused"  # 401 / 402 / 403: the key is refused, not the job


#: The refusals of the key (auth, balance, privacy or region) rather than of one job.
_KEY_REFUSALS = (AuthenticationError, PaymentRequiredError, PermissionDeniedError)
#: The API's own failures of a job, its verdict only once repeated (Venice's error-code reference).
_REPEATED_VERDICTS = (500, 503)


def judge_poll(error: VeniceError) -> PollVerdict:
    """What a failed ``retrieve`` says about its job.

    The API's verdict comes as its JSON error body (Venice's error-code reference): 400 / 404 / 422
    (and any other 4xx) end the job at once, 500 / 503 once repeated. Anything else did
    not come from the API about this job: a transport failure or timeout, an HTML or empty
    body (a proxy or load balancer speaking), a gateway's 502 / 504, a 408 / 425. A body
    too large for its cap is final: fetching it again would download as much again.
    """
    if isinstance(error, RateLimitError):
        return PollVerdict.WAIT
    if isinstance(error, _KEY_REFUSALS):
        return PollVerdict.KEY_REFUSED  # whatever its body: the job stays resumable anyway
    if isinstance(error, ResponseTooLarge):
        return PollVerdict.FINAL
    if isinstance(error, TransportError):
        return PollVerdict.UNREACHED
    if isinstance(error, APIStatusError):
        status = error.status_code
        if not isinstance(error.body, Mapping):
            return PollVerdict.UNREACHED  # [UNK] Venice's own errors are always JSON objects
        if status in _REPEATED_VERDICTS:
            return PollVerdict.REPEAT
        if status >= 500 or status in _RETRY_POLL_STATUSES:
            return PollVerdict.UNREACHED
    return PollVerdict.FINAL


def leaves_job_resumable(error: BaseException) -> bool:
    """Whether a job that ended with ``error`` was not judged by the API and stays to be
    fetched: its deadline passed, the API was unreachable, or the key was refused. The
    journal keeps such a job "queued", so ``resume`` polls it again."""
    return isinstance(error, (JobDeadlineExceeded, JobUnreachable, *_KEY_REFUSALS))


class TokenTooLate(Exception):
    """No token for the request could be had before its deadline; nothing was sent.

    Internal: the caller turns it into its public error (``QueueDeadlineExceeded``).
    """

    def __init__(self, endpoint: str, waited: float) -> None:
        super().__init__(f"no {endpoint} token before the deadline")
        self.endpoint = endpoint
        self.waited = waited


class Retrier:
    """Sends one request within the budget and repeats it as :func:`decide` says.

    ``acquire`` is the request budget's ``acquire``: it waits for a token, through any pause
    a 429 started. ``rng`` draws the backoff jitter (injected, so tests can fix it).
    """

    def __init__(
        self,
        *,
        acquire: Callable[..., Awaitable[object]],
        policy: RetryPolicy,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._acquire = acquire
        # A budget written before the protocol took a model: its queue calls go unheld.
        self._acquire_takes_model = takes_keyword(acquire, "model")
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        #: Callers waiting for a token right now, per endpoint (for statistics).
        self.waiting: Counter[str] = Counter()

    def with_policy(self, policy: RetryPolicy) -> Retrier:
        """This retry loop under another policy (a ``with_options`` view's, or a job's): the
        same budget, clock, jitter and counts of callers waiting (the session's statistics)."""
        if policy == self.policy:
            return self
        other = copy.copy(self)  # shares ``waiting``: one count per session
        other.policy = policy
        return other

    def backoff(self, failures: int) -> float:
        """Seconds to wait before retry number ``failures`` (1-based), with jitter."""
        return self.policy.backoff(failures, self._rng.random())

    def poll_again_in(
        self, error: VeniceError, failures: int, *, queue_id: str, unreached: float | None
    ) -> float:
        """For the poller, after ``failures`` earlier failed polls of job ``queue_id`` (that
        :func:`judge_poll` did not end): seconds until the next poll. A 429 waits 0 s (the
        budget holds the pause). ``unreached``: seconds the job has gone without a verdict
        from the API. Logs the retry at INFO, naming the job; past
        ``attempts`` at DEBUG, as a job may be retried for long (a warning comes only if it
        is given up on)."""
        if isinstance(error, RateLimitError):
            return 0.0
        delay = self.backoff(failures + 1)
        fields = _fields("retrieve", failures + 1, error, delay)
        fields["queue_id"] = queue_id
        what = f"retrieve of job {queue_id}"
        if failures + 1 < self.policy.attempts:
            # No "of N": polls go on past ``attempts`` while the API gives no verdict.
            log.info(
                "%s failed (%s); polling again (%d) in %.2f s",
                what,
                type(error).__name__,
                failures + 1,
                delay,
                extra=fields,
            )
            return delay
        log.log(
            logging.INFO if failures + 1 == self.policy.attempts else logging.DEBUG,
            "%s failed (%s) %d times, no verdict from the API for %.1f s; polling it again "
            "in %.2f s, until %.0f s without one",
            what,
            type(error).__name__,
            failures + 1,
            unreached or 0.0,
            delay,
            self.policy.unreachable_after,
            extra=fields,
        )
        return delay

    async def call(
        self,
        endpoint: str,
        send: Callable[[], Awaitable[T]],
        *,
        limiter: RequestLimiter,
        deadline: float | None = None,
        before_retry: Callable[[VeniceError], Awaitable[None]] | None = None,
        model: str | None = None,
    ) -> T:
        """``send()`` once a token and a request slot are free, repeated per :func:`decide`.

        ``deadline`` (a ``clock.monotonic()`` reading) bounds each wait for a token: one
        that would come later ends the call with :class:`TokenTooLate` before that attempt
        is sent. An attempt already sent is never cut short. ``before_retry`` is awaited
        with the error once it is decided that the request will be sent again, before the
        wait (``queue`` gives its journal row back then, see ``_submit``). ``model`` goes to
        the budget's ``acquire`` (an overloaded model holds its own queue calls).

        Raises:
            TokenTooLate: no token before ``deadline``; that attempt was not sent.
            VeniceError: the error of the last attempt, once attempts (or, for 429s,
                :data:`_MAX_RATE_LIMITED` in a row) are exhausted, or any error to raise.
        """
        failures = rate_limited = 0
        clock = self._clock
        while True:
            asked = clock.monotonic()
            self.waiting[endpoint] += 1
            try:
                if model is not None and self._acquire_takes_model:
                    granted = await self._acquire(endpoint, deadline_at=deadline, model=model)
                elif deadline is None:
                    granted = await self._acquire(endpoint)
                else:
                    granted = await self._acquire(endpoint, deadline_at=deadline)
            finally:
                self.waiting[endpoint] -= 1
            if granted is False:  # a budget predating deadlines returns None: granted
                raise TokenTooLate(endpoint, clock.monotonic() - asked)
            attempt = failures + rate_limited + 1
            try:
                with attempt_context(attempt, wait=clock.monotonic() - asked):
                    async with limiter:
                        # A cancel that came in the loop pass the token did (a batch block
                        # left meanwhile) wins: ``send`` is shielded once it starts, and a
                        # token wasted is cheaper than a job nobody wants.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        return await send()
            except VeniceError as error:
                verdict = decide(endpoint, error, self.policy)
                if verdict is Verdict.RAISE:
                    raise
                if verdict is Verdict.WAIT:
                    rate_limited += 1
                    if rate_limited >= _MAX_RATE_LIMITED:
                        _give_up(endpoint, attempt, error)
                        raise
                    if before_retry is not None:
                        await before_retry(error)
                    log.info(
                        "%s rate limited (429 number %d); sending again once the pause ends",
                        endpoint,
                        rate_limited,
                        extra=_fields(endpoint, attempt, error, None),
                    )
                    continue  # the budget holds the next token until the pause ends
                failures += 1
                if failures >= self.policy.attempts:
                    _give_up(endpoint, attempt, error)
                    raise
                delay = self.backoff(failures)
                if before_retry is not None:
                    await before_retry(error)
                fields = _fields(endpoint, attempt, error, delay)
                _log_retry(endpoint, error, failures, self.policy.attempts, delay, fields)
                await clock.sleep(delay)


def _log_retry(
    what: str,
    error: VeniceError,
    failures: int,
    attempts: int,
    delay: float,
    fields: dict[str, object],
) -> None:
    """The one INFO record of a retry of :meth:`Retrier.call`."""
    log.info(
        "%s failed (%s); retry %d of %d in %.2f s",
        what,
        type(error).__name__,
        failures,
        attempts - 1,
        delay,
        extra=fields,
    )


def _fields(
    endpoint: str, attempt: int, error: VeniceError, delay: float | None
) -> dict[str, object]:
    return {
        "endpoint": endpoint,
        "attempt": attempt,
        "status": getattr(error, "status_code", 0),
        "error": type(error).__name__,
        "retry_in": delay,
    }


def _give_up(endpoint: str, attempt: int, error: VeniceError) -> None:
    log.warning(
        "%s failed %d time(s), giving up: %s",
        endpoint,
        attempt,
        error,
        extra=_fields(endpoint, attempt, error, None),
    )
