"""How a :class:`~._rate.redis_budget.RedisBudget` learns from an answer.

The answer is read as :func:`~._rate.lessons.read_signals` reads it for every budget. What other
processes need to hear of (a 429, a failure, a pause, a newly stated limit, an allowance
below the window's room) goes to Redis in one LEARN round trip, whose reply updates the
mirror; anything else costs no round trip. While Redis is away the lesson is applied to the
mirror alone, on this process's share of the failure window, and kept for when Redis is back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .._core.clock import Clock
from .._core.logging import log
from .budget import hold_model
from .endpoint_rate import others_on_key, pool_refuted_message
from .lessons import AnswerSignals, read_signals, teaches_nothing
from .redis_link import RedisLink
from .redis_mirror import SharedMirror

__all__ = ["ResponseLearner"]


class ResponseLearner:
    """Applies the rules of ``LocalBudget.record_response`` to the shared budget.

    Args:
        clock: the session's clock.
        mirror: the local copy of the shared state.
        link: the connection to Redis.
        max_retry_after: cap, in seconds, on any pause read from response headers.
        failure_threshold: failures in the window that hold requests (of all processes;
            while Redis is away, this process's share of it).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        mirror: SharedMirror,
        link: RedisLink,
        max_retry_after: float,
        failure_threshold: int,
    ) -> None:
        self._clock = clock
        self._mirror = mirror
        self._link = link
        self._max_retry_after = max_retry_after
        self._failure_threshold = failure_threshold
        self._consecutive_429 = 0

    async def record(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        """Learn from an answer to ``endpoint`` (``status=0``: a transport failure)."""
        if teaches_nothing(status, headers):  # most answers: nothing to share, no window read
            self._consecutive_429 = 0
            return
        mirror, link = self._mirror, self._link
        now = self._clock.monotonic()
        view = mirror.endpoint(endpoint)
        if 200 <= status < 300:
            self._consecutive_429 = 0
        if status == 429:
            mirror.rate_limited += 1
            view.rate_limited += 1
            self._consecutive_429 += 1
        window = mirror.window(endpoint, now, away=link.away)
        own_view = mirror.entities.get(endpoint)
        limit = own_view.limit if own_view is not None else None
        lesson = read_signals(
            endpoint,
            status,
            headers,
            message=message,
            model=model,
            now_epoch=self._clock.time(),
            cap=self._max_retry_after,
            consecutive_429=self._consecutive_429,
            interval=own_view.window / limit if own_view is not None and limit else None,
        )
        if lesson.failure:
            mirror.failures += 1
        if lesson.stated is not None and lesson.remaining is not None and own_view is not None:
            # Every process's grants are in the shared log: the others are outside clients.
            # The pool's grants count as ours too (as EndpointRate.observe_use: errs low).
            ours = 0
            for rule in mirror.entities_of(endpoint):
                entity_view = mirror.entity_view(rule)
                if entity_view.limit is None:
                    continue
                entity_view.prune(now)
                mine = len(entity_view.own) if link.away else len(entity_view.grants)
                ours = max(ours, mine)
            view.others = others_on_key(lesson.stated, lesson.remaining, ours)
            view.others_until = now + own_view.window
        if lesson.model_pause is not None:  # this process holds it at once, Redis or not
            delay, held = lesson.model_pause
            hold_model(mirror.model_held, held, now + delay)
        room = window.free_after(0.0, now) if window is not None else math.inf
        if not lesson.worth_sharing(stated_sent=link.stated_sent.get(endpoint), room=room):
            return
        if not link.away:
            entities = mirror.entities_of(endpoint)
            snapshot = await link.learn(entities, lesson)
            if snapshot is not None:
                if lesson.stated is not None:
                    link.stated_sent[endpoint] = lesson.stated
                if lesson.failure:
                    mirror.own_failures.append((now, False))
                if snapshot.refuted_by is not None and mirror.pool is not None:
                    first = snapshot.refuted_by
                    second = (endpoint, lesson.stated or 0)
                    log.info(
                        "%s",
                        pool_refuted_message(first, second, mirror.pool.configured),
                        extra={"endpoint": endpoint, "pool": mirror.pool.configured},
                    )
                mirror.absorb(endpoint, entities, snapshot, self._clock.monotonic())
                return
        self._learn_locally(endpoint, lesson, self._clock.monotonic())

    def _learn_locally(self, endpoint: str, lesson: AnswerSignals, now: float) -> None:
        """While Redis is away: apply ``lesson`` here, and keep it for when Redis is back."""
        mirror = self._mirror
        view = mirror.endpoint(endpoint)
        if lesson.pause is not None:
            until = now + lesson.pause[0]
            mirror.extend_session_pause(until, now, lesson.pause[1])
            if mirror.pending_pause is None or until > mirror.pending_pause[0]:
                mirror.pending_pause = (until, lesson.pause[1])
        if lesson.stated is not None:
            entity_view = mirror.entity_view(mirror.entities_of(endpoint)[0])
            if entity_view.limit is None or lesson.stated < entity_view.limit:
                entity_view.limit = lesson.stated
        if lesson.allowance is not None:
            view.allowance, view.allowance_until = lesson.allowance[0], now + lesson.allowance[1]
        if lesson.endpoint_pause is not None:
            mirror.extend_endpoint_pause(view, now + lesson.endpoint_pause, now)
        if lesson.failure:
            mirror.own_failures.append((now, True))
            self._local_failure_pause(now)

    def _local_failure_pause(self, now: float) -> None:
        """Hold requests once this process's share of the failure window is full."""
        mirror = self._mirror
        mirror.prune_failures(now)
        failures = mirror.own_failures
        threshold = max(1, math.floor(self._failure_threshold * mirror.share))
        if len(failures) >= threshold:
            until = failures[len(failures) - threshold][0] + mirror.failure_window
            mirror.extend_failure_pause(until, now)
