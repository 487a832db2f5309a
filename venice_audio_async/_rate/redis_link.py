"""A :class:`~._rate.redis_budget.RedisBudget`'s connection to Redis: the wire, and Redis away.

Everything that knows the wire lives here: the keys of a namespace, the arguments each Lua
script of :mod:`._rate.redis_scripts` takes (real milliseconds) and the replies it gives (real
microseconds, turned into clock seconds). A round trip that fails or times out marks Redis
away (one warning); attempts to come back are spaced by a doubling, jittered backoff, and
the one that succeeds first logs in Redis what this process did meanwhile (BACKFILL).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._core.logging import log
from .budget import RunTime
from .lessons import AnswerSignals
from .redis_mirror import Entity, Snapshot
from .redis_scripts import ACQUIRE, BACKFILL, DEMAND, LEARN, RELEASE, RUNS

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Answer", "RedisLink", "redis_errors"]

#: What a script argument may be.
_Arg = str | int | float


@attrs.frozen
class Answer:
    """ACQUIRE's reply: granted or not, the wait it names, competitors, the shared state.

    ``wait`` is in clock seconds from the reply (``inf``: not while the limit stands);
    ``contenders`` counts the other clients asking for the endpoint.
    """

    granted: bool
    wait: float
    contenders: int
    snapshot: Snapshot


class RedisLink:
    """One process's connection to the shared budget in Redis.

    Args:
        redis: a ``redis.asyncio.Redis`` client.
        namespace: prefix of every key.
        scale: real seconds per clock second.
        timeout: real seconds one round trip may take before Redis counts as away.
        backoff: ``(first, longest)`` real seconds between reconnection attempts.
        ttl_ms: how long Redis keeps a key nobody touches (real ms).
        failure_threshold: failures of all processes in the window that hold requests.
        failure_window: seconds of the failed-request window (clock s).
        share: the local share, for the warning when Redis goes away.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        scale: float,
        timeout: float,
        backoff: tuple[float, float],
        ttl_ms: int,
        failure_threshold: int,
        failure_window: float,
        share: float,
    ) -> None:
        self._redis = redis
        self._prefix = f"venice-audio:{{{namespace}}}:"
        self._scale = scale
        self._timeout = timeout
        self._backoff = backoff
        self._ttl_ms = ttl_ms
        self._failure_threshold = failure_threshold
        self._failure_window = failure_window
        self._share = share
        self._scripts = {
            name: redis.register_script(source)
            for name, source in (
                ("acquire", ACQUIRE),
                ("learn", LEARN),
                ("backfill", BACKFILL),
                ("release", RELEASE),
                ("demand", DEMAND),
                ("runs", RUNS),
            )
        }
        self._client_id = secrets.token_hex(6)
        self._sequence = itertools.count(1)
        self._errors = redis_errors()
        self._reconnect_delay = backoff[0]
        self._reconnect_at = 0.0  # time.monotonic() of the next attempt while away
        #: Round trips so far (successful or not).
        self.round_trips = 0
        #: Whether Redis is away (this process runs on its local share).
        self.away = False
        #: The limit each endpoint stated, as Redis last heard it from us (told again once
        #: Redis is back).
        self.stated_sent: dict[str, int] = {}

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._redis.connection_pool.disconnect()

    # ------------------------------------------------------------------ wire format

    def member(self) -> str:
        """A name for one grant or event, unique among all clients."""
        return f"{self._client_id}:{next(self._sequence)}"

    def _key(self, suffix: str) -> str:
        return self._prefix + suffix

    def _ms(self, seconds: float) -> float:
        """Clock seconds as real milliseconds (what the scripts take)."""
        return seconds * self._scale * 1000.0

    def _from_us(self, microseconds: float) -> float:
        """Real microseconds (what the scripts answer) as clock seconds."""
        return microseconds / 1e6 / self._scale

    def _from_ms(self, milliseconds: float) -> float:
        """Real milliseconds (what a script took, :meth:`_ms`, read back) as clock seconds."""
        return self._from_us(milliseconds * 1000.0)

    def _entity_args(self, entities: Sequence[Entity]) -> tuple[list[str], list[_Arg]]:
        keys: list[str] = []
        args: list[_Arg] = []
        for entity in entities:
            keys += [self._key(f"ep:{entity.name}"), self._key(f"log:{entity.name}")]
            configured = entity.configured if entity.explicit else -entity.configured
            args += [configured, self._ms(entity.window), entity.burst]
        return keys, args

    def _snapshot(
        self, reply: Sequence[Any], refuted_by: tuple[str, int] | None = None
    ) -> Snapshot:
        _, session_us, reason, failure_us, endpoint_us, allowance, allowance_us = reply[:7]
        rows = reply[7:]
        return Snapshot(
            session_pause=self._from_us(session_us) if session_us > 0 else None,
            reason=_text(reason),
            failure_pause=self._from_us(failure_us) if failure_us > 0 else None,
            endpoint_pause=self._from_us(endpoint_us) if endpoint_us > 0 else None,
            allowance=int(allowance) if allowance >= 0 else None,
            allowance_for=self._from_us(allowance_us),
            rows=tuple(
                (
                    int(row[0]) if int(row[0]) > 0 else None,  # 0: none; -1: refuted
                    bool(int(row[1])),
                    tuple(self._from_us(age) for age in row[2:]),
                )
                for row in rows
            ),
            pool_refuted=any(int(row[0]) < 0 for row in rows),
            refuted_by=refuted_by,
        )

    async def _round_trip(self, script: str, keys: list[str], args: list[_Arg]) -> Any:
        """One script call; raises one of ``self._errors`` when Redis is away."""
        self.round_trips += 1
        with anyio.CancelScope(shield=True), anyio.fail_after(self._timeout):
            return await self._scripts[script](keys=keys, args=args)

    # ------------------------------------------------------------------ the scripts

    async def acquire(
        self, entities: Sequence[Entity], member: str, model: str | None = None, reserve: int = 0
    ) -> Answer | None:
        """ACQUIRE a grant named ``member`` (``model``: a queue call's, which waits out that
        model's hold; ``reserve``: the pool's grants kept for queue calls waiting);
        ``None`` when Redis is away."""
        keys, args = self._entity_args(entities)
        if len(entities) > 1:
            args.append(reserve)
        try:
            reply = await self._round_trip(
                "acquire",
                [self._key("session"), *keys],
                [member, self._client_id, self._ttl_ms, model or "", *args],
            )
        except self._errors as error:
            self.go_away(error)
            return None
        wait_us = reply[1]
        wait = math.inf if wait_us < 0 else self._from_us(wait_us)
        return Answer(bool(int(reply[0])), wait, int(reply[2]), self._snapshot(reply[3:]))

    async def demand(
        self, endpoint: str, values: Sequence[float], stale: float, logs: Sequence[Entity] = ()
    ) -> tuple[int, tuple[float, ...], tuple[tuple[float, ...], ...]] | None:
        """Publish this process's demand for ``endpoint`` (DEMAND) and read the others':
        ``(how many others, their summed demand, per entity of logs the ages of its grants
        in its window)``; entries older than ``stale`` clock seconds are dropped. ``None``
        when Redis is away."""
        args: list[_Arg] = [self._client_id, self._ttl_ms, self._ms(stale), len(values)]
        args += [repr(float(v)) for v in values]
        args += [self._ms(entity.window) for entity in logs]
        keys = [self._key(f"demand:{endpoint}")]
        keys += [self._key(f"log:{entity.name}") for entity in logs]
        try:
            reply = await self._round_trip("demand", keys, args)
        except self._errors as error:
            self.go_away(error)
            return None
        n = len(values)
        sums = tuple(float(_text(v)) for v in reply[1 : n + 1])
        ages = tuple(tuple(self._from_us(age) for age in row) for row in reply[n + 1 :])
        return int(reply[0]), sums, ages

    async def runs(
        self, finished: Sequence[RunTime], cursor: int
    ) -> tuple[int, tuple[RunTime, ...]] | None:
        """Publish how long this process's finished jobs ran (RUNS) and read the other
        processes' run times numbered above ``cursor``: ``(the next cursor, their run
        times)``; ``None`` when Redis is away."""
        args: list[_Arg] = [self._client_id, self._ttl_ms, cursor, len(finished)]
        for run in finished:
            hint = self._ms(run.hint) if run.hint is not None else -1
            args += [run.model, self._ms(run.seconds), hint]
        keys = [self._key("runs"), self._key("runs:seq")]
        try:
            reply = await self._round_trip("runs", keys, args)
        except self._errors as error:
            self.go_away(error)
            return None
        heard: list[RunTime] = []
        entries = reply[1:]
        for i in range(0, len(entries) - 2, 3):
            model, seconds_ms, hint_ms = entries[i : i + 3]
            hint = float(_text(hint_ms))
            heard.append(
                RunTime(
                    _text(model),
                    self._from_ms(float(_text(seconds_ms))),
                    self._from_ms(hint) if hint >= 0 else None,
                )
            )
        return int(reply[0]), tuple(heard)

    async def release(self, entities: Sequence[Entity], member: str) -> None:
        """Give back the grant ``member`` (if Redis cannot hear it, it ages out in time)."""
        logs = [self._key(f"log:{entity.name}") for entity in entities]
        with anyio.CancelScope(shield=True), contextlib.suppress(*self._errors):
            await self._round_trip("release", logs, [member])

    async def learn(self, entities: Sequence[Entity], lesson: AnswerSignals) -> Snapshot | None:
        """Tell Redis what an answer taught (LEARN) about ``entities[0]``, the endpoint
        (then its pool); ``None`` when Redis is away."""
        entity_keys, entity_args = self._entity_args(entities)
        if len(entities) == 1:
            entity_args += ["", "", ""]
        pause, allowance = lesson.pause, lesson.allowance
        args: list[_Arg] = [
            self.member(),
            self._ttl_ms,
            *entity_args,
            int(lesson.rate_limited),
            self._ms(pause[0]) if pause is not None else -1,
            pause[1] if pause is not None else "",
            lesson.stated or 0,
            allowance[0] if allowance is not None else -1,
            self._ms(allowance[1]) if allowance is not None else 0,
            self._ms(lesson.endpoint_pause) if lesson.endpoint_pause is not None else -1,
            int(lesson.failure),
            self._failure_threshold,
            self._ms(self._failure_window),
            lesson.model_pause[1] if lesson.model_pause is not None else "",
            self._ms(lesson.model_pause[0]) if lesson.model_pause is not None else -1,
            entities[0].name,
        ]
        keys = [self._key("session"), self._key("failures"), *entity_keys]
        try:
            reply = await self._round_trip("learn", keys, args)
        except self._errors as error:
            self.go_away(error)
            return None
        other = _text(reply[0])
        refuted_by = (other, int(reply[1])) if other else None
        return self._snapshot(reply[2:], refuted_by)

    async def backfill(
        self,
        pause: tuple[float, str] | None,
        failure_ages: Sequence[float],
        grant_ages: Mapping[str, Sequence[float]],
    ) -> bool:
        """Try Redis again, logging there what was done while away; whether it is back.

        ``pause``: (seconds left, reason) of a session pause learnt meanwhile; the ages
        are clock seconds.
        """
        keys = [self._key("session"), self._key("failures")]
        pause_ms, reason = (self._ms(pause[0]), pause[1]) if pause is not None else (-1.0, "")
        args: list[_Arg] = [f"{self._client_id}:b{next(self._sequence)}", self._ttl_ms]
        args += [pause_ms, reason, self._failure_threshold, self._ms(self._failure_window)]
        args += [len(failure_ages), *(self._ms(age) * 1000 for age in failure_ages)]
        for name, ages in grant_ages.items():
            keys.append(self._key(f"log:{name}"))
            args += [len(ages), *(self._ms(age) * 1000 for age in ages)]
        try:
            await self._round_trip("backfill", keys, args)
        except self._errors as error:
            self.go_away(error)
            return False
        self.away = False
        log.warning(
            "Redis is back: recorded the %d grant(s) and %d failure(s) made meanwhile; "
            "sharing the budget again",
            sum(len(ages) for ages in grant_ages.values()),
            len(failure_ages),
        )
        return True

    # ------------------------------------------------------------------ Redis away

    def go_away(self, error: BaseException) -> None:
        """A round trip failed: Redis is away; back off before the next attempt."""
        if self.away:
            self._reconnect_delay = min(self._backoff[1], self._reconnect_delay * 2)
        else:
            self.away = True
            self._reconnect_delay = self._backoff[0]
            self.stated_sent.clear()  # tell Redis again once it is back
            log.warning(
                "Redis is unreachable (%s: %s): this process now sends at most %.0f%% of each "
                "rate limit on its own until Redis is back; reconnecting with backoff",
                type(error).__name__,
                error,
                self._share * 100,
            )
        spread = 0.5 + random.random()
        self._reconnect_at = time.monotonic() + self._reconnect_delay * spread

    def reconnect_wait(self) -> float:
        """Clock seconds until the next reconnection attempt."""
        return max(0.0, self._reconnect_at - time.monotonic()) / self._scale


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a round trip raises when Redis is away, slow or refuses the script."""
    errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return errors
    return (RedisError, *errors)
