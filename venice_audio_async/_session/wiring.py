"""How a session's parts are built and connected: the object graph in one place.

Each part is handed what it needs and nothing else; none of them knows the session. The
client is shared by all; the budget by the retrier (every request but polls) and the
scheduler (polls); the ledger by the submitter, the resumer and the scheduler (outcomes
and releases); the submitter by the resumer (it queues a journal's unsent jobs) and by
the result calls (``generate``). The session's options arrive here as given: the defaults
(``VENICE_API_KEY``, a system clock, default settings) are filled in here too.
"""

from __future__ import annotations

import random
from pathlib import Path

import attrs

from .._client import VeniceClient
from .._core.audio import Destinations
from .._core.clock import Clock, SystemClock
from .._core.config import Limits, RateLimits, RetryPolicy, endpoint_rates, pooled_rate
from .._core.environment import api_key_from_env, base_url_from_env
from .._ledger.ledger import Ledger
from .._polling.estimator import DurationEstimator, PollingBounds
from .._polling.scheduler import Scheduler
from .._rate.budget import LocalBudget, RequestBudget, ResponseRecorder
from .._rate.limiter import RequestLimiter
from .._rate.retry import Retrier
from .batch_flow import BatchFlows
from .catalogue import Catalogue
from .key_limits import KeyLimits
from .lifecycle import Lifecycle
from .options import SessionOptions, check_options, shared_budget_from_env
from .results import Delivery, Results
from .resume import Resumer
from .statistics import StatisticsCollector
from .status import EndedJobs, JobWatch
from .submit import Submitter

__all__ = ["SessionParts", "build_parts"]


@attrs.frozen(kw_only=True)
class SessionParts:
    """Everything a session is made of."""

    client: VeniceClient
    clock: Clock
    budget: RequestBudget
    retrier: Retrier
    recorder: ResponseRecorder
    ledger: Ledger
    scheduler: Scheduler
    catalogue: Catalogue
    destinations: Destinations
    submitter: Submitter
    resumer: Resumer
    results: Results
    watch: JobWatch
    statistics: StatisticsCollector
    lifecycle: Lifecycle


def build_parts(options: SessionOptions, *, owner: str = "AsyncSession") -> SessionParts:
    """Build and connect the parts of one session from its options (as given: the defaults
    are filled in here; ``owner`` names the class in error messages).

    Raises:
        TypeError: an unknown option, or one of the wrong type.
        ValueError: invalid configuration (a plain-http remote ``base_url``, a negative
            spending limit, an unknown ``release_media``).
        ImportError: ``VENICE_REDIS_URL`` is set but the ``redis`` extra is not installed.
    """
    check_options(owner, options)
    api_key = api_key_from_env(options.get("api_key"))
    base_url = base_url_from_env(options.get("base_url"))
    timeouts = options.get("timeouts")
    http_session = options.get("http_session")
    allow_insecure_http = options.get("allow_insecure_http", False)
    clock = options.get("clock")
    retry = options.get("retry")
    limits = options.get("limits")
    rate_limits = options.get("rate_limits")
    polling = options.get("polling")
    journal = options.get("journal")
    budget = options.get("budget")
    max_spend_usd = options.get("max_spend_usd")
    output_dir = options.get("output_dir")
    release_media = options.get("release_media", "complete")
    catalogue = options.get("catalogue")
    validate = options.get("validate", True)
    clock = clock or SystemClock()
    retry = retry or RetryPolicy()
    limits = limits or Limits()
    rate_limits = rate_limits or RateLimits()
    client = VeniceClient(
        api_key=api_key,
        base_url=base_url,
        timeouts=timeouts,
        limits=limits,
        http_session=http_session,
        allow_insecure_http=allow_insecure_http,
    )
    given_budget = budget
    # The budget built here for this process alone, if any: the one the key's limits set.
    own_local: LocalBudget | None = None
    if budget is None:
        budget = shared_budget_from_env(api_key, clock, rate_limits)
    if budget is None:
        budget = own_local = LocalBudget(
            clock=clock,
            rates=endpoint_rates(rate_limits),
            pool=pooled_rate(rate_limits),
            pooled_endpoints=rate_limits.pooled_endpoints,
            max_retry_after=retry.max_retry_after,
            failure_window=(rate_limits.failures_per_window, rate_limits.failure_window),
        )
    recorder = ResponseRecorder(budget)
    client.transport.set_observer(recorder)
    rng = random.Random()  # backoff jitter and the poll policy's draws
    retrier = Retrier(acquire=budget.acquire, policy=retry, clock=clock, rng=rng)
    limiter = RequestLimiter(limits.max_concurrent_requests)
    ledger = Ledger(limit_usd=max_spend_usd, clock=clock, journal=journal)
    ended = EndedJobs()
    estimator = DurationEstimator(bounds=polling or PollingBounds())
    scheduler = Scheduler(
        client=client,
        budget=budget,
        estimator=estimator,
        clock=clock,
        retrier=retrier,
        # Polls hold only their share of the slots: the rest stay free for other calls.
        limiter=RequestLimiter(limits.concurrent_polls, parent=limiter),
        release_limiter=limiter,
        release=release_media,
        max_untaken_bytes=limits.max_untaken_bytes,
        rng=rng,
        on_outcome=ended.recording(ledger.record_outcome),
        on_released=ledger.record_released,
    )
    models = Catalogue(
        client=client, retrier=retrier, limiter=limiter, models=catalogue, validate=validate
    )
    destinations = Destinations(
        output_dir=Path(output_dir) if output_dir is not None else None,
        memory_limit=limits.max_audio_bytes_in_memory,
    )
    submitter = Submitter(
        client=client,
        catalogue=models,
        ledger=ledger,
        scheduler=scheduler,
        retrier=retrier,
        limiter=limiter,
        destinations=destinations,
        clock=clock,
    )
    resumer = Resumer(
        ledger=ledger,
        submitter=submitter,
        scheduler=scheduler,
        destinations=destinations,
        clock=clock,
    )
    key_limits = KeyLimits(
        client=client,
        catalogue=models,
        budget=own_local,
        own_budget=given_budget is None,
        rate_limits=rate_limits,
        has_key=bool(api_key),
    )
    lifecycle = Lifecycle(
        client=client,
        budget=budget,
        ledger=ledger,
        scheduler=scheduler,
        has_key=bool(api_key),
        key_limits=key_limits,
    )
    flows = BatchFlows(submitter=submitter, scheduler=scheduler, spawn=lifecycle.spawn)
    return SessionParts(
        client=client,
        clock=clock,
        budget=budget,
        retrier=retrier,
        recorder=recorder,
        ledger=ledger,
        scheduler=scheduler,
        catalogue=models,
        destinations=destinations,
        submitter=submitter,
        resumer=resumer,
        results=Results(
            delivery=Delivery(scheduler=scheduler, clock=clock),
            flows=flows,
            submitter=submitter,
            clock=clock,
            check_open=lifecycle.check_open,
        ),
        watch=JobWatch(
            scheduler=scheduler,
            ended=ended,
            budget=budget,
            clock=clock,
            submits_waiting=submitter.waiting,
            token_waiters=retrier.waiting,
            estimator=estimator,
        ),
        statistics=StatisticsCollector(
            scheduler=scheduler,
            budget=budget,
            recorder=recorder,
            ledger=ledger,
            retrier=retrier,
            clock=clock,
        ),
        lifecycle=lifecycle,
    )
