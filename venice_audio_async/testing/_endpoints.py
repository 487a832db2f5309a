"""The fake server's endpoints, once a request has passed the pipeline's checks.

``GET /models``, ``POST /audio/{quote,queue,retrieve,complete}`` and
``GET /api_keys/rate_limits``: each takes the request's
:class:`~._wire.Context` and its parsed body and returns the answer, reading and changing
the shared job table and balance. Auth, limits and faults are the pipeline's business; only
the audio-stage faults (``truncate``, ``content_type``) are taken here, because only an
answer that carries audio can suffer them.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from aiohttp import web

from venice_audio_async._core.clock import Clock

from ._audio import CONTENT_TYPES
from ._faults import FaultBook
from ._limits import Balance, KeyRateLimits, Overloads
from ._messages import (
    DEFAULT_SUGGESTED_PROMPT,
    MSG_INSUFFICIENT,
    MSG_INVALID_ID,
    MSG_MEDIA_GONE,
    MSG_MODEL_NOT_FOUND,
    MSG_MODEL_OVERLOADED,
    detailed_error,
    job_failure_message,
    seconds_text,
)
from ._pricing import compute_quote, queue_price
from ._rules import Issue, model_issues, parse_duration, schema_issues
from ._state import JobStore
from ._tones import tone_seconds
from ._types import FakeJob, JobScript
from ._wire import Context

__all__ = ["ApiEndpoints", "JobScripts"]

_MODEL_TYPES = frozenset(
    {
        "asr",
        "embedding",
        "image",
        "music",
        "text",
        "tts",
        "upscale",
        "inpaint",
        "video",
        "all",
        "code",
    }
)
_STREAM_CHUNK = 64 * 1024
_DAY = 86400.0


class JobScripts:
    """Where each new job's timeline comes from: the planned ones first, then the default."""

    def __init__(
        self, default: JobScript | Callable[[Mapping[str, Any]], JobScript] | None
    ) -> None:
        self._default = default
        self.planned: deque[JobScript] = deque()

    def next(self, body: Mapping[str, Any]) -> JobScript:
        """The timeline of a job queued with ``body``."""
        if self.planned:
            return self.planned.popleft()
        if self._default is None:
            return JobScript()
        if isinstance(self._default, JobScript):
            return self._default
        return self._default(body)


class ApiEndpoints:
    """The handlers of the routed endpoints, sharing the server's jobs and balance."""

    def __init__(
        self,
        *,
        catalogue: list[dict[str, Any]],
        jobs: dict[str, FakeJob],
        scripts: JobScripts,
        balance: Balance,
        faults: FaultBook,
        key_limits: KeyRateLimits,
        api_keys: Collection[str] | None,
        clock: Clock,
        tones: bool = False,
        store: JobStore | None = None,
        overloads: Overloads | None = None,
        accept_extra_fields: Collection[str] = (),
    ) -> None:
        self.catalogue = catalogue
        self._accept_extra = frozenset(accept_extra_fields)
        self.rows: dict[str, dict[str, Any]] = {str(row["id"]): row for row in catalogue}
        self._jobs = jobs
        self._scripts = scripts
        self._balance = balance
        self._faults = faults
        self._key_limits = key_limits
        self._api_keys = api_keys
        self._clock = clock
        self._tones = tones
        self._store = store
        self._overloads = overloads if overloads is not None else Overloads()

    def models(self, ctx: Context) -> web.Response:
        """``GET /models?type=...``: the catalogue rows of one type."""
        model_type = ctx.request.query.get("type", "text")
        if model_type not in _MODEL_TYPES:
            expected = " | ".join(f"'{name}'" for name in sorted(_MODEL_TYPES))
            issue = Issue(
                ("type",),
                f"Invalid enum value. Expected {expected}, received '{model_type}'",
                "invalid_enum_value",
                {"options": sorted(_MODEL_TYPES), "received": model_type},
            )
            return ctx.json(400, detailed_error([issue]))
        rows = [
            row for row in self.catalogue if model_type == "all" or row.get("type") == model_type
        ]
        return ctx.json(200, {"object": "list", "type": model_type, "data": rows})

    def quote(self, ctx: Context, body: Any) -> web.Response:
        """``POST /audio/quote``: the price of a request."""
        row, error = self._validate(ctx, "quote", body)
        if row is None:
            assert error is not None
            return error
        count = body.get("character_count")
        quote = compute_quote(
            row,
            duration_seconds=parse_duration(body.get("duration_seconds")),
            character_count=int(count) if count is not None else None,
        )
        return ctx.json(200, {"quote": quote})

    def queue(self, ctx: Context, body: Any) -> web.Response:
        """``POST /audio/queue``: debit the price and create a job."""
        row, error = self._validate(ctx, "queue", body)
        if row is None:
            assert error is not None
            return error
        # [UNK] where the API checks for overload; here a valid request is refused before it
        # is billed, so the 400s of a bad body still come first.
        overloaded = self._overloads.retry_after(str(row["id"]), self._clock.monotonic())
        if overloaded is not None:
            ctx.faults.append("overloaded")
            ctx.headers["Retry-After"] = str(math.ceil(overloaded))
            return ctx.json(429, {"error": MSG_MODEL_OVERLOADED})
        price = queue_price(body, row)
        if not self._balance.debit(price):
            return ctx.json(402, {"error": MSG_INSUFFICIENT})
        queue_id = str(uuid.uuid4())
        audio_format = row.get("model_spec", {}).get("default_format")
        if self._tones:
            audio_format = "wav"  # the tones are WAV whatever the model makes
        job = FakeJob(
            queue_id=queue_id,
            model=str(row["id"]),
            body=body,
            queued_at=self._clock.monotonic(),
            script=self._scripts.next(body),
            cost_usd=price,
            audio_format=audio_format if audio_format in CONTENT_TYPES else "mp3",
            credential=ctx.credential,
            tone_seconds=tone_seconds(body, row) if self._tones else None,
        )
        self._jobs[queue_id] = job
        if self._store is not None:
            self._store.queued(job)  # before the answer: a job is never known only here
        self._balance.refund_when_failed(job)
        self._add_balance_header(ctx)
        return ctx.json(200, {"model": job.model, "queue_id": queue_id, "status": "QUEUED"})

    async def retrieve(self, ctx: Context, body: Any) -> web.StreamResponse:
        """``POST /audio/retrieve``: progress while running, then the failure or the audio."""
        job, row, error = self._job_or_error(ctx, "retrieve", body)
        if error is not None:
            return error
        assert job is not None
        assert row is not None
        job.retrieve_count += 1
        now = self._clock.monotonic()
        if not job.done(now):
            self._add_balance_header(ctx)
            return ctx.json(
                200,
                {
                    "status": "PROCESSING",
                    "average_execution_time": round(job.script.estimate * 1000),
                    "execution_duration": round((now - job.queued_at) * 1000),
                },
            )
        if job.failed:
            self._balance.settle(now)
            return self._job_failure(ctx, job)
        if job.deleted:
            return ctx.json(404, {"error": MSG_MEDIA_GONE})
        if body.get("delete_media_on_completion") is True:
            job.deleted = True  # gone once the answer starts, even if the download fails
            if self._store is not None:
                self._store.deleted(job)
        self._add_balance_header(ctx)
        return await self._send_audio(ctx, job, row)

    def complete(self, ctx: Context, body: Any) -> web.Response:
        """``POST /audio/complete``: release a finished job's media."""
        job, _, error = self._job_or_error(ctx, "complete", body)
        if error is not None:
            return error
        assert job is not None
        job.complete_count += 1
        self._add_balance_header(ctx)
        if not job.done(self._clock.monotonic()):
            return ctx.json(200, {"success": False})
        job.deleted = True
        job.released = True
        if self._store is not None:
            self._store.deleted(job)
        return ctx.json(200, {"success": True})

    def key_rate_limits(self, ctx: Context) -> web.Response:
        """``GET /api_keys/rate_limits``: the key's tier, balance and limits per model.

        The shape of the OpenAPI ``getApiKeyRateLimits`` answer; the key never expires and
        the next epoch (when daily limits reset) begins at the next virtual UTC midnight.
        """
        usd = self._balance.usd
        data = {
            "accessPermitted": True,
            "apiTier": {"id": "paid", "isCharged": True},
            "balances": {} if usd is None else {"USD": round(usd, 6)},
            "keyExpiration": None,
            "nextEpochBegins": _next_utc_midnight(self._clock.time()),
            "rateLimits": self._key_limits.entries(),
        }
        return ctx.json(200, {"data": data})

    # -- shared steps ------------------------------------------------------------------

    def _validate(
        self, ctx: Context, kind: Literal["quote", "queue", "retrieve", "complete"], body: Any
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        """Schema + per-model checks: ``(row, None)`` when valid, else ``(None, answer)``."""
        issues = schema_issues(kind, body, self._accept_extra if kind == "queue" else ())
        model_id = body.get("model") if isinstance(body, dict) else None
        row = self.rows.get(model_id) if isinstance(model_id, str) else None
        if row is None and not issues:
            return None, ctx.json(404, {"error": MSG_MODEL_NOT_FOUND})
        if row is not None and kind in ("quote", "queue"):
            issues += model_issues(kind, body, row)
        if issues:
            return None, ctx.json(400, detailed_error(issues))
        assert row is not None
        return row, None

    def _job_or_error(
        self, ctx: Context, endpoint: Literal["retrieve", "complete"], body: Any
    ) -> tuple[FakeJob, dict[str, Any], None] | tuple[None, None, web.Response]:
        """The job a retrieve/complete body names with its model row, or the error answer."""
        row, error = self._validate(ctx, endpoint, body)
        if row is None:
            assert error is not None
            return None, None, error
        job = self._jobs.get(body["queue_id"])
        if (
            job is None
            or job.model != body["model"]
            # A job restored from a state file has no credential: any accepted key may see it.
            or (
                self._api_keys is not None
                and job.credential is not None
                and job.credential != ctx.credential
            )
        ):
            return None, None, ctx.json(400, {"error": MSG_INVALID_ID})
        return job, row, None

    def _job_failure(self, ctx: Context, job: FakeJob) -> web.Response:
        status = job.script.fail_status
        assert status is not None
        payload: dict[str, Any] = {"error": job.script.fail_message or job_failure_message(status)}
        if status == 422:
            payload["suggested_prompt"] = job.script.suggested_prompt or DEFAULT_SUGGESTED_PROMPT
        return ctx.json(status, payload)

    async def _send_audio(
        self, ctx: Context, job: FakeJob, row: Mapping[str, Any]
    ) -> web.StreamResponse:
        fault = self._faults.take("retrieve", "audio", job.queue_id)
        if fault is not None:
            ctx.faults.append(fault.label)
        content_type = CONTENT_TYPES[job.audio_format]
        if fault is not None and fault.kind == "content_type":
            content_type = fault.media_type
        spec = row.get("model_spec", {})
        headers = {
            **ctx.headers,
            "Content-Type": content_type,
            "x-venice-audio-format": job.audio_format,
            "x-venice-inference-time": seconds_text(job.script.duration),
            "x-venice-model-id": job.model,
            "x-venice-model-name": str(spec.get("name", job.model)),
        }
        size = job.audio_size
        truncate = fault is not None and fault.kind == "truncate"
        limit = max(1, size // 2) if truncate else size
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = size
        sent = 0
        try:
            await response.prepare(ctx.request)
            for chunk in job.audio_chunks(_STREAM_CHUNK):
                piece = chunk[: limit - sent]
                await response.write(piece)
                sent += len(piece)
                if sent >= limit:
                    break
            if truncate:
                transport = ctx.request.transport
                if transport is not None:
                    transport.close()  # flushes what was written, then closes
                return response
            await response.write_eof()
        except ConnectionError:
            return response  # the client went away; aiohttp notices and stays quiet
        job.downloads += 1
        return response

    def _add_balance_header(self, ctx: Context) -> None:
        value = self._balance.header()
        if value is not None:
            ctx.headers["X-Balance-Remaining"] = value


def _next_utc_midnight(epoch: float) -> str:
    """The next UTC midnight after ``epoch``, as ``2026-04-21T00:00:00.000Z``.

    A time-scaled clock's virtual epoch lies far beyond the year 9999, where no date can say
    it; the real date is used then.
    """
    midnight = (math.floor(epoch / _DAY) + 1) * _DAY
    try:
        moment = datetime.fromtimestamp(midnight, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        moment = datetime.fromtimestamp((math.floor(time.time() / _DAY) + 1) * _DAY, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
