"""Injected faults: which request gets which :class:`Fault`, and the answer a status fault gives."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
from aiohttp import web
from multidict import CIMultiDict

from venice_audio_async._core.clock import Clock

from ._messages import DEFAULT_SUGGESTED_PROMPT, default_message
from ._types import ENDPOINTS, Fault

__all__ = ["FaultBook", "fault_response"]


@attrs.define(eq=False)
class _Injection:
    fault: Fault
    remaining: int | None  # None: every matching request within the window
    queue_id: str | None
    start: float = -math.inf  # virtual monotonic time the injection starts applying
    end: float = math.inf  # ... and stops (exclusive)


class FaultBook:
    """The faults still to inject, per endpoint, used in the order they were made."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._injections: dict[str, list[_Injection]] = {endpoint: [] for endpoint in ENDPOINTS}

    def add(
        self,
        endpoint: str,
        fault: Fault,
        *,
        times: int | None,
        queue_id: str | None,
        during: tuple[float, float] | None = None,
    ) -> None:
        """Make the next ``times`` matching requests to ``endpoint`` misbehave with ``fault``.

        ``during``: ``(start, end)`` in virtual seconds from now; only requests arriving in
        that window match, and with ``times=None`` every one of them does.

        Raises:
            ValueError: unknown endpoint, ``times < 1``, ``times=None`` without ``during``,
                a bad window, or an audio fault (``truncate``, ``content_type``) on an
                endpoint other than ``retrieve``.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        if times is None and during is None:
            raise ValueError("times=None (no limit) needs a during=(start, end) window")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1, got {times!r}")
        if fault.stage == "audio" and endpoint != "retrieve":
            raise ValueError(f"{fault.kind} faults only apply to 'retrieve'")
        injection = _Injection(fault, times, queue_id)
        if during is not None:
            start, end = during
            if not (math.isfinite(start) and start >= 0 and end > start):
                raise ValueError(f"during must be (start >= 0, end > start), got {during!r}")
            now = self._clock.monotonic()
            injection.start, injection.end = now + start, now + end
        self._injections[endpoint].append(injection)

    def take(self, endpoint: str, stage: str, queue_id: str | None) -> Fault | None:
        """Use up the first fault of ``stage`` that applies to this request, if any."""
        now = self._clock.monotonic()
        injections = self._injections[endpoint]
        injections[:] = [item for item in injections if now < item.end]  # windows past
        for position, item in enumerate(injections):
            if item.fault.stage != stage or now < item.start:
                continue
            if item.queue_id is not None and item.queue_id != queue_id:
                continue
            if item.remaining is not None:
                item.remaining -= 1
                if item.remaining <= 0:
                    del injections[position]
            return item.fault
        return None

    def pending(self, endpoint: str | None = None) -> int:
        """How many fault uses are left (for one endpoint or all); an injection without a
        count whose window is not over counts as one."""
        now = self._clock.monotonic()
        endpoints = ENDPOINTS if endpoint is None else (endpoint,)
        return sum(
            1 if item.remaining is None else item.remaining
            for name in endpoints
            for item in self._injections.get(name, [])
            if now < item.end
        )


def fault_response(
    fault: Fault, endpoint: str, *, limit: int | None, reset_epoch_ms: int | None
) -> web.Response:
    """The answer of a ``status`` fault on ``endpoint`` (see :meth:`Fault.status`).

    ``limit`` is the endpoint's request limit to state on a 429 (``None``: state none);
    ``reset_epoch_ms`` is the 429's ``x-ratelimit-reset-requests`` (``None``: state neither
    it nor ``x-ratelimit-remaining-requests``).
    """
    status = fault.http_status
    headers: CIMultiDict[str] = CIMultiDict()
    if fault.retry_after is not None:
        headers["Retry-After"] = str(math.ceil(fault.retry_after))
    if status == 429:
        if limit is not None:
            headers["x-ratelimit-limit-requests"] = str(limit)
        if reset_epoch_ms is not None:
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = str(reset_epoch_ms)
    headers.update(fault.headers)  # the test's own headers replace these defaults
    body = fault.body
    if body is None:
        payload: dict[str, Any] = {"error": default_message(status, endpoint)}
        if status == 422:
            payload["suggested_prompt"] = DEFAULT_SUGGESTED_PROMPT
        body = json.dumps(payload).encode()
    headers["Content-Type"] = fault.media_type
    return web.Response(status=status, body=body, headers=headers)
