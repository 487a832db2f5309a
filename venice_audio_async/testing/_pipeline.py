"""The fake server's request pipeline: every request passes these stages, first answer wins.

1. route and method (unknown route: 404 JSON, wrong method: 405 JSON);
2. an injected request-stage :class:`~._types.Fault` (status / delay / drop / hang);
3. the error-budget lockout (429);
4. credentials on ``queue``/``retrieve``/``complete`` (none: 402 x402 discovery, bad: 401)
   and on ``GET /api_keys/rate_limits`` (none or bad: 401);
5. the rate limits (429 with ``Retry-After``): the endpoint's own, stated in
   ``x-ratelimit-*-requests`` unless the server hides its limits, and the pooled one over
   every audio endpoint, never stated;
6. body checks for POSTs: size (413), ``Content-Type`` (400), JSON syntax (400);
7. schema + per-model validation (400, or 404 for an unknown model), then the endpoint
   (``queue`` of an overloaded model: 429);
8. an injected answer-stage fault on a JSON answer (``drip``, ``drop(mid_body=True)``).

Every request is recorded (:class:`~._types.RecordedRequest`) with the status it got, and
every answer is fed to the error budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Collection

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from venice_audio_async._core.clock import Clock

from ._endpoints import ApiEndpoints
from ._faults import FaultBook, fault_response
from ._limits import Balance, ErrorBudget, RateVerdict, RequestLimits
from ._messages import (
    MSG_AUTH_FAILED,
    MSG_RATE_LIMITED,
    STATUS_MESSAGES,
    lockout_message,
    payment_required,
)
from ._types import Endpoint, Fault, RecordedRequest
from ._wire import Context, drop, json_response, loads_lenient, loads_strict, queue_id_of, read_body

__all__ = ["API_PREFIX", "RequestPipeline"]

#: Path prefix of every route.
API_PREFIX = "/api/v1"

_ROUTES: dict[str, tuple[str, Endpoint]] = {
    f"{API_PREFIX}/models": ("GET", "models"),
    f"{API_PREFIX}/audio/quote": ("POST", "quote"),
    f"{API_PREFIX}/audio/queue": ("POST", "queue"),
    f"{API_PREFIX}/audio/retrieve": ("POST", "retrieve"),
    f"{API_PREFIX}/audio/complete": ("POST", "complete"),
    f"{API_PREFIX}/api_keys/rate_limits": ("GET", "key_rate_limits"),
}
_CREDENTIALED = frozenset({"queue", "retrieve", "complete", "key_rate_limits"})


class RequestPipeline:
    """Records, checks and dispatches each request to the :class:`ApiEndpoints`."""

    def __init__(
        self,
        *,
        endpoints: ApiEndpoints,
        faults: FaultBook,
        limits: RequestLimits,
        error_budget: ErrorBudget | None,
        balance: Balance,
        api_keys: Collection[str] | None,
        clock: Clock,
        requests: list[RecordedRequest],
        counts: Counter[str],
    ) -> None:
        self._endpoints = endpoints
        self._faults = faults
        self._limits = limits
        self._error_budget = error_budget
        self._balance = balance
        self._api_keys = api_keys
        self._clock = clock
        self._requests = requests
        self._counts = counts
        #: Set when the server starts closing: ``delay`` faults stop waiting.
        self.closing = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of every path: record, answer, account."""
        route = _ROUTES.get(request.path)
        endpoint = route[1] if route is not None else "unknown"
        raw, too_large = await read_body(request)
        body = loads_lenient(raw)
        transport = request.transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        peer = (str(peername[0]), int(peername[1])) if peername else None
        record = RecordedRequest(
            endpoint=endpoint,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            raw_body=raw,
            time=self._clock.monotonic(),
            status=0,
            peer=peer,
            fault=None,
        )
        index = len(self._requests)
        self._requests.append(record)
        self._counts[endpoint] += 1
        ctx = Context(request, endpoint, raw, body, too_large)
        status = 0
        retry_after: float | None = None
        try:
            response = await self._process(ctx, route)
            status = 0 if ctx.dropped else response.status
            if status and "Retry-After" in response.headers:
                with contextlib.suppress(ValueError):
                    retry_after = float(response.headers["Retry-After"])
            return response
        finally:
            self._requests[index] = attrs.evolve(
                record,
                status=status,
                fault="+".join(ctx.faults) or None,
                retry_after=retry_after,
            )
            if self._error_budget is not None:
                lockout = "error_budget" in ctx.faults
                self._error_budget.record(status, self._clock.monotonic(), lockout=lockout)

    async def _process(
        self, ctx: Context, route: tuple[str, Endpoint] | None
    ) -> web.StreamResponse:
        if route is None:
            return json_response(404, {"error": "Not found"})
        method, endpoint = route
        if ctx.request.method != method:
            return json_response(405, {"error": "Method not allowed"}, {"Allow": method})
        self._balance.settle(self._clock.monotonic())

        fault = self._faults.take(endpoint, "request", queue_id_of(ctx.body))
        if fault is not None:
            ctx.faults.append(fault.label)
            if fault.kind == "status":
                return self._fault_answer(ctx, fault)
            if fault.kind == "delay":
                if not await self._sleep(fault.seconds):
                    return drop(ctx)  # shutting down
            elif fault.kind == "hang":
                if fault.forever:
                    await self.closing.wait()
                else:
                    await self._sleep(fault.seconds)
                return drop(ctx)
            elif endpoint == "queue":
                ctx.drop_after = True  # the job is created, only the answer is lost
            else:
                return drop(ctx)

        response = await self._serve(ctx, endpoint)
        if ctx.drop_after:
            return drop(ctx)
        if isinstance(response, web.Response) and not response.prepared:
            fault = self._faults.take(endpoint, "answer", queue_id_of(ctx.body))
            if fault is not None:
                ctx.faults.append(fault.label)
                return await self._send_slowly(ctx, response, fault)
        return response

    async def _serve(self, ctx: Context, endpoint: Endpoint) -> web.StreamResponse:
        now = self._clock.monotonic()
        if self._error_budget is not None and self._error_budget.locked(now):
            return self._lockout_answer(ctx, self._error_budget, now)
        if endpoint in _CREDENTIALED:
            denied = self._authenticate(ctx)
            if denied is not None:
                return denied
        limited = self._rate_limit(ctx, endpoint, now)
        if limited is not None:
            return limited
        if endpoint == "models":
            return self._endpoints.models(ctx)
        if endpoint == "key_rate_limits":
            return self._endpoints.key_rate_limits(ctx)

        if ctx.too_large:
            return ctx.json(413, {"error": STATUS_MESSAGES[413], "code": "PAYLOAD_TOO_LARGE"})
        media_type = ctx.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return ctx.json(400, {"error": "'Content-Type' must be 'application/json'"})
        try:
            body = loads_strict(ctx.raw)
        except ValueError:
            return ctx.json(400, {"error": "Invalid JSON request"})

        if endpoint == "quote":
            return self._endpoints.quote(ctx, body)
        if endpoint == "queue":
            return self._endpoints.queue(ctx, body)
        if endpoint == "retrieve":
            return await self._endpoints.retrieve(ctx, body)
        return self._endpoints.complete(ctx, body)

    # -- stages ------------------------------------------------------------------------

    def _fault_answer(self, ctx: Context, fault: Fault) -> web.Response:
        wait = fault.retry_after if fault.retry_after is not None else 1.0
        return fault_response(
            fault,
            ctx.endpoint,
            limit=self._limits.stated_limit(ctx.endpoint),
            reset_epoch_ms=self._epoch_ms(wait) if self._limits.states(ctx.endpoint) else None,
        )

    async def _send_slowly(
        self, ctx: Context, response: web.Response, fault: Fault
    ) -> web.StreamResponse:
        """Send a JSON answer's status and headers at once, then its body badly: one byte at
        a time over ``fault.seconds`` (``drip``), or half of it and a closed connection
        (``drop(mid_body=True)``). The full ``Content-Length`` is announced either way."""
        body = response.body
        assert isinstance(body, bytes)  # every JSON answer is built from bytes
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        try:
            await stream.prepare(ctx.request)
            if fault.kind == "drip":
                step = fault.seconds / max(1, len(body))
                for index in range(len(body)):
                    if not await self._sleep(step):
                        break  # shutting down: cut the answer short
                    await stream.write(body[index : index + 1])
                else:
                    await stream.write_eof()
                    return stream
            else:
                await stream.write(body[: len(body) // 2])
            transport = ctx.request.transport
            if transport is not None:
                transport.close()  # flushes what was written, then closes
        except ConnectionError:
            pass  # the client gave up; aiohttp notices and stays quiet
        return stream

    def spend(self, endpoint: str, count: int) -> int:
        """Spend ``count`` requests of ``endpoint`` from outside: they fill the same windows
        as a client's requests, and a refused one is a 429 for the error budget. Returns how
        many were admitted (none while the key is locked out)."""
        admitted = 0
        for _ in range(count):
            now = self._clock.monotonic()
            if self._error_budget is not None and self._error_budget.locked(now):
                continue
            verdict = self._limits.check(endpoint, now)
            if verdict.refused_by:
                if self._error_budget is not None:
                    self._error_budget.record(429, now)
                continue
            admitted += 1
        return admitted

    async def _sleep(self, seconds: float) -> bool:
        """Sleep on the server clock; ``False`` if the server started closing meanwhile."""
        if self.closing.is_set():
            return False
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({sleeper, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, closing):
                task.cancel()
            await asyncio.gather(sleeper, closing, return_exceptions=True)
        return not self.closing.is_set()

    def _lockout_answer(self, ctx: Context, budget: ErrorBudget, now: float) -> web.Response:
        ctx.faults.append("error_budget")
        ctx.headers["x-ratelimit-remaining"] = "0"
        ctx.headers["x-ratelimit-resets"] = str(self._epoch_ms(budget.locked_until - now))
        return ctx.json(429, {"error": lockout_message(budget.failures, budget.window)})

    def _authenticate(self, ctx: Context) -> web.Response | None:
        headers = ctx.request.headers
        wallet = headers.get("SIGN-IN-WITH-X") or headers.get("X-Sign-In-With-X")
        if wallet and wallet.strip():
            ctx.credential = f"siwx:{wallet.strip()}"  # the wallet header wins over a key
            return None
        authorization = headers.get("Authorization")
        if authorization is None or not authorization.strip():
            if ctx.endpoint == "key_rate_limits":  # not a paid route: nothing to pay for
                return ctx.json(401, {"error": MSG_AUTH_FAILED})
            body, header = payment_required(str(ctx.request.url))
            ctx.headers["PAYMENT-REQUIRED"] = header
            return ctx.json(402, body)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return ctx.json(401, {"error": MSG_AUTH_FAILED})
        if self._api_keys is not None and token not in self._api_keys:
            return ctx.json(401, {"error": MSG_AUTH_FAILED})
        ctx.credential = token
        return None

    def _rate_limit(self, ctx: Context, endpoint: str, now: float) -> web.Response | None:
        verdict = self._limits.check(endpoint, now)
        self._state_limit(ctx, verdict)
        if not verdict.refused_by:
            return None
        ctx.faults.extend(verdict.refused_by)
        ctx.headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after)))
        return ctx.json(429, {"error": MSG_RATE_LIMITED})

    def _state_limit(self, ctx: Context, verdict: RateVerdict) -> None:
        stated = verdict.stated
        if stated is None:
            return
        ctx.headers["x-ratelimit-limit-requests"] = str(stated.limit)
        ctx.headers["x-ratelimit-remaining-requests"] = str(stated.remaining)
        ctx.headers["x-ratelimit-reset-requests"] = str(self._epoch_ms(stated.reset_in))

    def _epoch_ms(self, seconds_from_now: float) -> int:
        """Virtual Unix epoch, in milliseconds, ``seconds_from_now`` virtual seconds ahead."""
        return int((self._clock.time() + max(0.0, seconds_from_now)) * 1000)
