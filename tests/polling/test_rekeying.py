"""Re-keying after a model's fit moves: small moves touch only jobs due soon, large ones
re-key every job of the model; and polls waiting for room under delete_on_retrieve."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import pytest

import venice_audio_async as v
from venice_audio_async._client import VeniceClient
from venice_audio_async._polling.estimator import DurationEstimator, PollingBounds
from venice_audio_async._polling.scheduler import Scheduler
from venice_audio_async._rate.budget import LocalBudget
from venice_audio_async._rate.limiter import RequestLimiter
from venice_audio_async._rate.retry import Retrier
from venice_audio_async.testing import ManualClock
from venice_audio_async.types import RetrieveRequest

from .test_scheduler import Harness, StubClient, _memory_sink

pytestmark = pytest.mark.anyio


class HintedClient(StubClient):
    """A stub whose jobs each report their own server estimate."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock, hint=0.0)
        self.data = b"abc"

    def add_hinted(self, queue_id: str, duration: float, hint: float) -> v.Job:
        return self.add(queue_id, duration, hint=hint)

    async def retrieve(self, request: RetrieveRequest, *, sink: Any) -> Any:
        answer = await super().retrieve(request, sink=sink)
        if isinstance(answer, v.AudioResult):
            return v.AudioResult(
                content_type=answer.content_type,
                format=answer.format,
                size=len(self.data),
                data=self.data,
                venice=answer.venice,
            )
        return answer


async def _harness(
    bounds: PollingBounds | None = None, **scheduler_options: Any
) -> AsyncIterator[Harness]:
    clock = ManualClock()
    client = HintedClient(clock)
    budget = LocalBudget(clock=clock, rates={})  # no window: the price stays at its floor
    policy = v.RetryPolicy(jitter=0.0)
    scheduler = Scheduler(
        client=cast(VeniceClient, client),
        budget=budget,
        estimator=DurationEstimator(bounds=bounds or PollingBounds(max_interval=300.0)),
        clock=clock,
        retrier=Retrier(acquire=budget.acquire, policy=policy, clock=clock),
        limiter=RequestLimiter(64),
        **scheduler_options,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        yield Harness(clock, client, scheduler)
        tg.cancel_scope.cancel()


@pytest.fixture
async def hinted() -> AsyncIterator[Harness]:
    """A scheduler over a stub whose jobs report per-job estimates, no rate window."""
    async for harness in _harness():
        yield harness


def _client(harness: Harness) -> HintedClient:
    return cast(HintedClient, harness.client)


async def test_small_fit_moves_do_not_re_key_jobs_due_far_ahead(hinted: Harness) -> None:
    """While short jobs finish and refit the model, jobs due minutes ahead are not touched:
    a completion's work does not grow with the jobs waiting."""
    client, scheduler = _client(hinted), hinted.scheduler
    scheduler._fits.estimator.observe_hint("m", 20.0)
    for i in range(300):  # once polled, due at max_interval: their estimate is a day
        scheduler.track(client.add_hinted(f"long{i}", 1e6, 86_400.0), _memory_sink, elapsed=0.0)
    await hinted.run_until(lambda: len(client.retrieves) >= 300)
    client.retrieves.clear()
    scheduler._fits.estimator.observe_hint("m", 20.0)
    entries = {t.job.queue_id: t.entry for t in scheduler.jobs.live}
    for i in range(40):
        scheduler.track(client.add_hinted(f"s{i}", 18.0 + 0.1 * i, 20.0), _memory_sink, elapsed=0)
    await hinted.run_until(lambda: scheduler.counts().succeeded == 40, limit=150.0)
    long_polls = [qid for _, qid in client.retrieves if qid.startswith("long")]
    assert not long_polls  # none came due while the short ones ran
    # Not one of them was re-keyed either: each still has the heap entry it had.
    assert all(scheduler.jobs.jobs[qid].entry == entry for qid, entry in entries.items())


async def test_a_large_fit_fall_re_keys_jobs_keyed_far_ahead() -> None:
    """Jobs keyed far ahead on a slow estimate are polled soon after finished jobs show
    the model is much faster, not at their old keys."""
    # A poll must save a second of delay: on a 200 s estimate the first poll is far out.
    async for harness in _harness(PollingBounds(max_interval=300.0, delay_per_poll=1.0)):
        await _large_fall(harness)


async def _large_fall(hinted: Harness) -> None:
    client, scheduler = _client(hinted), hinted.scheduler
    scheduler._fits.estimator.observe_hint("m", 200.0)
    # They really take 30 s, and their estimate (200 s) puts their first poll ~minutes out.
    for i in range(20):
        scheduler.track(client.add_hinted(f"w{i}", 30.0, 200.0), _memory_sink, elapsed=0.0)
    await hinted.settle()
    keyed = {t.job.queue_id: t.keyed_due for t in scheduler.jobs.live}
    assert min(keyed.values()) > 35.0  # beyond the 30 s sweep horizon
    # Twelve jobs of the same model and estimate, attached once they had run 5 s each
    # (polled at once): the fit falls far.
    hinted.clock.advance(1.0)
    for i in range(12):
        job = client.add_hinted(f"f{i}", 0.0, 200.0)
        client.queued_at[job.queue_id] -= 5.0
        scheduler.track(job, _memory_sink, elapsed=None)
    await hinted.run_until(lambda: scheduler.counts().succeeded == 32, limit=400.0)
    for i in range(20):
        first = min(t for t, qid in client.retrieves if qid == f"w{i}")
        assert first < keyed[f"w{i}"] - 1.0, (first, keyed[f"w{i}"])


async def test_delete_on_retrieve_polls_wait_while_untaken_audio_is_over_the_cap() -> None:
    """Under delete_on_retrieve nothing can be dropped and fetched again: over
    max_untaken_bytes no further poll goes out until a caller takes an outcome."""
    async for harness in _harness(release="delete_on_retrieve", max_untaken_bytes=250):
        await _hold_over_the_cap(harness)


async def _hold_over_the_cap(harness: Harness) -> None:
    client, scheduler = _client(harness), harness.scheduler
    client.data = b"x" * 100
    scheduler._fits.estimator.observe_hint("m", 5.0)
    for i in range(5):
        scheduler.track(client.add_hinted(f"j{i}", 5.0 + i, 5.0), _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: scheduler.counts().succeeded == 3, limit=100.0)
    polls = len(client.retrieves)
    harness.clock.advance(120.0)
    await harness.settle()
    assert len(client.retrieves) == polls  # 300 bytes held > 250: nothing more is sent
    assert scheduler.counts().succeeded == 3
    scheduler.take(scheduler.jobs.finished()[0].queue_id)  # 200 bytes held: room again
    await harness.run_until(lambda: scheduler.counts().succeeded >= 4, limit=400.0)
    assert len(client.retrieves) > polls
