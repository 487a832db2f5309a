"""An in-process fake of Venice's asynchronous audio API, served over real HTTP by aiohttp.

:class:`FakeServer` implements ``GET /models`` and ``POST /audio/{quote,queue,retrieve,complete}``
under ``/api/v1`` following AUDIO_API.md (section 11 is its checklist), keeps every job's
state, records every request, and lets a test script job timelines (:class:`JobScript`) and
inject faults (:class:`Fault`). All times are *virtual* seconds of :attr:`FakeServer.clock`
(a :class:`~venice_audio_async._clock.ScaledClock`), and every number on the wire is virtual
too: a "60 s" job at ``time_scale=0.001`` finishes after 60 real milliseconds but still
reports ``average_execution_time`` in the tens of thousands of milliseconds.

Request pipeline (first answer wins):

1. route and method (unknown route: 404 JSON, wrong method: 405 JSON);
2. an injected request-stage :class:`Fault` (status / delay / drop);
3. the error-budget lockout (429);
4. credentials on ``queue``/``retrieve``/``complete`` (none: 402 x402 discovery, bad: 401);
5. the per-endpoint rate limit (429 with ``Retry-After`` and ``x-ratelimit-*-requests``);
6. body checks for POSTs: size (413), ``Content-Type`` (400), JSON syntax (400);
7. schema + per-model validation (400, or 404 for an unknown model), then the endpoint.

Assumptions where the reference is silent ([UNK]/[INF] in AUDIO_API.md), all deliberate:

* ``retrieve``/``complete`` naming a *different* model than the job's answer 400 "Request ID
  is invalid." (the id is not valid for that model). With ``api_keys`` configured, a job is
  also invisible (400) to other credentials, like "someone else's queue_id".
* A ``SIGN-IN-WITH-X`` (or legacy ``X-Sign-In-With-X``) header is accepted with any non-empty
  value, even when ``api_keys`` is set: signatures are not checked. It wins over a Bearer key.
* ``complete`` on a failed job answers ``{"success": true}`` (there is nothing to keep).
* ``delete_media_on_completion: true`` deletes the media as soon as the audio answer starts:
  if that download is then cut (a ``truncate`` fault or a network error), the media is gone
  and the next ``retrieve`` is a 404 -- a client must not rely on re-downloading.
* Failed jobs are refunded when they fail, i.e. at ``queued_at + duration``.
* Rate limits are per endpoint for the whole server (not per key), sliding windows of 60
  virtual seconds; rejected requests do not use up the window.
* The error budget counts answers that are not 2xx, except 429s (counting its own lockout
  answers would extend the lockout forever) and dropped connections; the budget and the
  lockout are server wide. Lockout answers carry ``x-ratelimit-remaining: 0`` and
  ``x-ratelimit-resets`` (virtual epoch ms) and no ``Retry-After``, as [SKILL] describes.
* ``GET /models`` without ``type`` lists ``text`` models (Venice's default), so the fake
  returns an empty list: ask for ``type=music``.
* ``truncate`` and ``content_type`` faults only apply to an answer that carries audio; a
  ``retrieve`` of a job that is still running (or failed, or deleted) does not consume them.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import heapq
import itertools
import json
import math
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from venice_audio_async._clock import Clock, ScaledClock, SystemClock

from ._audio import (
    AUDIO_FORMATS,
    CONTENT_TYPES,
    DEFAULT_AUDIO_SIZE,
    audio_bytes,
    iter_audio,
    min_audio_size,
)
from ._catalogue import load_default_catalogue
from ._rules import (
    Issue,
    compute_quote,
    detailed_error,
    model_issues,
    parse_duration,
    queue_price,
    schema_issues,
)

__all__ = [
    "ENDPOINTS",
    "FakeJob",
    "FakeServer",
    "Fault",
    "JobScript",
    "RecordedRequest",
]

Endpoint = Literal["models", "quote", "queue", "retrieve", "complete"]

#: The endpoint names used by :meth:`FakeServer.inject`, ``rate_limits`` and the request log.
ENDPOINTS: tuple[Endpoint, ...] = ("models", "quote", "queue", "retrieve", "complete")

#: ``x-venice-version`` sent on every response.
SERVER_VERSION = "20260420.0-fake"

#: Largest accepted request body ([SKILL]: 35 MB).
MAX_BODY_BYTES = 35 * 1024 * 1024

#: Length of a rate-limit window, in virtual seconds.
RATE_WINDOW = 60.0

#: ``audio_size`` must be at least this, so that any container can be built.
MIN_AUDIO_SIZE = max(min_audio_size(fmt, id3=True) for fmt in AUDIO_FORMATS)

_API = "/api/v1"
_ROUTES: dict[str, tuple[str, Endpoint]] = {
    f"{_API}/models": ("GET", "models"),
    f"{_API}/audio/quote": ("POST", "quote"),
    f"{_API}/audio/queue": ("POST", "queue"),
    f"{_API}/audio/retrieve": ("POST", "retrieve"),
    f"{_API}/audio/complete": ("POST", "complete"),
}
_CREDENTIALED = frozenset({"queue", "retrieve", "complete"})
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
_SHUTDOWN_TIMEOUT = 1.0  # real seconds aiohttp waits for in-flight handlers on close

MSG_INVALID_ID = "Request ID is invalid."
MSG_MEDIA_GONE = "Media could not be found. Request may be invalid, expired, or deleted."
MSG_MODEL_NOT_FOUND = "Specified model not found"
MSG_CONTENT_POLICY = "Your prompt violates the content policy of Venice.ai or the model provider"
MSG_RATE_LIMITED = "Rate limit exceeded"
MSG_INSUFFICIENT = (
    "Insufficient USD or Diem balance to complete request. "
    "Visit https://venice.ai/settings/api to add credits."
)
DEFAULT_SUGGESTED_PROMPT = "A calm instrumental piece with soft piano and warm strings."

# Default error texts per status (AUDIO_API.md section 8).
_STATUS_MESSAGES: dict[int, str] = {
    400: "Invalid request parameters",
    401: "Authentication failed",
    402: MSG_INSUFFICIENT,
    403: "Unauthorized access",
    404: MSG_MODEL_NOT_FOUND,
    405: "Method not allowed",
    413: "Request body exceeds the maximum allowed size.",
    415: "Invalid request content-type",
    422: MSG_CONTENT_POLICY,
    429: MSG_RATE_LIMITED,
    500: "An unknown error occurred",
    502: "Bad gateway",
    503: "The model is at capacity. Please try again later.",
    504: "The request took too long to complete. Please try again later.",
}
# Texts of a *job's* failure as reported by retrieve.
_JOB_FAILURE_MESSAGES: dict[int, str] = {
    400: "Invalid request parameters",
    422: MSG_CONTENT_POLICY,
    500: "Inference processing failed",
    503: "The model is at capacity. Please try again later.",
}


def _default_message(status: int, endpoint: str) -> str:
    if status == 404 and endpoint in ("retrieve", "complete"):
        return MSG_MEDIA_GONE
    return _STATUS_MESSAGES.get(status, "An unknown error occurred")


def _seconds_text(seconds: float) -> str:
    """``30.0`` -> ``"30"``, ``0.25`` -> ``"0.25"`` (header values in virtual seconds)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


# --- public value types ------------------------------------------------------------------


def _check_duration(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _check_optional_duration(
    _: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _check_fail_status(
    _: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and not 400 <= value <= 599:
        raise ValueError(f"fail_status must be an HTTP error status (400-599), got {value!r}")


def _check_audio_size(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < MIN_AUDIO_SIZE:
        raise ValueError(f"audio_size must be at least {MIN_AUDIO_SIZE} bytes, got {value!r}")


@attrs.frozen
class JobScript:
    """How one queued job behaves, in virtual seconds from its queue time.

    Attributes:
        duration: how long the job runs; ``retrieve`` answers PROCESSING until then.
        average_execution_time: the P80 estimate the server reports (seconds; sent as ms);
            ``None`` means ``duration * 1.2``.
        fail_status: ``None`` for success, else the HTTP status (400 / 422 / 500 / 503 ...)
            ``retrieve`` answers once the job is over; the charge is refunded.
        fail_message: the failure's ``error`` text; ``None`` picks the documented message for
            the status.
        suggested_prompt: for 422 failures, the ``suggested_prompt`` (``None``: a default).
        audio_size: bytes of the audio body; ``None`` means a small file
            (:data:`~venice_audio_async.testing._audio.DEFAULT_AUDIO_SIZE` bytes). Large bodies
            are streamed in 64 KiB chunks.
        id3: FLAC only: start the file with an ID3 tag, as some Venice FLAC output does.

    Raises:
        ValueError: on a negative or non-finite time, a non-error ``fail_status`` or an
            ``audio_size`` below :data:`MIN_AUDIO_SIZE`.
    """

    duration: float = attrs.field(default=30.0, validator=_check_duration)
    average_execution_time: float | None = attrs.field(
        default=None, validator=_check_optional_duration
    )
    fail_status: int | None = attrs.field(default=None, validator=_check_fail_status)
    fail_message: str | None = None
    suggested_prompt: str | None = None
    audio_size: int | None = attrs.field(default=None, validator=_check_audio_size)
    id3: bool = False

    @property
    def estimate(self) -> float:
        """The reported ``average_execution_time`` in virtual seconds."""
        if self.average_execution_time is not None:
            return self.average_execution_time
        return self.duration * 1.2


FaultKind = Literal["status", "delay", "drop", "truncate", "content_type"]


@attrs.frozen
class Fault:
    """A misbehaviour to inject with :meth:`FakeServer.inject`; build one with a classmethod.

    ``status``, ``delay`` and ``drop`` act when the request arrives, before normal handling;
    ``truncate`` and ``content_type`` alter an audio answer of ``retrieve``.
    """

    kind: FaultKind
    http_status: int = 0
    body: bytes | None = None
    media_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None
    seconds: float = 0.0

    @classmethod
    def status(
        cls,
        status: int,
        *,
        body: bytes | str | Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        """Answer ``status`` instead of handling the request.

        ``body`` defaults to ``{"error": <documented message for the status>}`` (422 adds a
        ``suggested_prompt``). ``retry_after`` (virtual seconds) sets ``Retry-After`` (rounded
        up to whole seconds). A 429 also carries ``x-ratelimit-remaining-requests: 0`` and
        ``x-ratelimit-reset-requests`` (virtual epoch ms, ``retry_after`` or 1 s ahead).
        Headers given in ``headers`` replace these defaults (matched case-insensitively).

        Raises:
            ValueError: ``status`` is not in 100-599, or ``retry_after`` is negative.
        """
        if not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status!r}")
        if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
            raise ValueError(f"retry_after must be >= 0, got {retry_after!r}")
        raw: bytes | None
        if body is None or isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = json.dumps(dict(body)).encode()
        return cls(
            kind="status",
            http_status=status,
            body=raw,
            media_type=content_type,
            headers=tuple((headers or {}).items()),
            retry_after=retry_after,
        )

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds`` (virtual) before handling the request normally.

        The request is still processed if the client gives up meanwhile (a queue still
        creates its job), as a real server would.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"delay must be >= 0, got {seconds!r}")
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Read the request, then close the connection without answering.

        On ``queue`` the request is handled first (the job is created and billed) and only the
        answer is lost.
        """
        return cls(kind="drop")

    @classmethod
    def truncate(cls) -> Fault:
        """``retrieve`` audio: send the full ``Content-Length``, half the body, then close."""
        return cls(kind="truncate")

    @classmethod
    def content_type(cls, value: str) -> Fault:
        """``retrieve`` audio: send the real bytes labelled with this ``Content-Type``."""
        return cls(kind="content_type", media_type=value)

    @property
    def stage(self) -> Literal["request", "audio"]:
        """``"audio"`` for faults that alter an audio answer, else ``"request"``."""
        return "audio" if self.kind in ("truncate", "content_type") else "request"

    @property
    def label(self) -> str:
        """Short description recorded in :attr:`RecordedRequest.fault`."""
        if self.kind == "status":
            return f"status:{self.http_status}"
        if self.kind == "delay":
            return f"delay:{_seconds_text(self.seconds)}"
        if self.kind == "content_type":
            return f"content_type:{self.media_type}"
        return self.kind


@attrs.frozen
class RecordedRequest:
    """One request the server received, and how it was answered.

    Attributes:
        endpoint: ``models``/``quote``/``queue``/``retrieve``/``complete``, or ``unknown``.
        method: HTTP method.
        path: URL path.
        query: query parameters.
        headers: a case-insensitive copy of the request headers.
        body: the parsed JSON body, or ``None`` (no body or not JSON).
        raw_body: the body bytes as received (empty when over the size limit).
        time: virtual monotonic time of arrival.
        status: the status answered, or 0 when no answer was sent (dropped).
        peer: the client's ``(host, port)``; distinct ports mean distinct connections.
        fault: what was injected or enforced: a :attr:`Fault.label`, ``"rate_limit"`` or
            ``"error_budget"`` (joined with ``+`` if several), else ``None``.
    """

    endpoint: str
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: Any
    raw_body: bytes
    time: float
    status: int
    peer: tuple[str, int] | None
    fault: str | None


@attrs.define(eq=False)
class FakeJob:
    """Server-side state of one queued job (mutable; read it from :attr:`FakeServer.jobs`).

    Attributes:
        queue_id: the id returned by ``queue``.
        model: the model id.
        body: the queue request body.
        queued_at: virtual monotonic time of queueing.
        script: the timeline this job follows.
        cost_usd: what ``queue`` charged (refunded if the job fails).
        audio_format: ``mp3``/``wav``/``flac`` (the model's ``default_format``).
        credential: the API key (or wallet header) that queued it.
        retrieve_count: ``retrieve`` requests for this job that reached it.
        complete_count: ``complete`` requests for this job that reached it.
        downloads: complete audio bodies sent.
        deleted: the media is gone (``complete`` or ``delete_media_on_completion``).
        released: ``complete`` answered ``{"success": true}``.
        refunded: the charge was given back (failed job).
    """

    queue_id: str
    model: str
    body: Mapping[str, Any]
    queued_at: float
    script: JobScript
    cost_usd: float
    audio_format: str
    credential: str | None = None
    retrieve_count: int = 0
    complete_count: int = 0
    downloads: int = 0
    deleted: bool = False
    released: bool = False
    refunded: bool = False

    @property
    def finishes_at(self) -> float:
        """Virtual monotonic time at which the job is over."""
        return self.queued_at + self.script.duration

    @property
    def failed(self) -> bool:
        """Whether the job's script ends in failure."""
        return self.script.fail_status is not None

    @property
    def audio_size(self) -> int:
        """Size in bytes of the audio body."""
        return self.script.audio_size if self.script.audio_size is not None else DEFAULT_AUDIO_SIZE

    def done(self, now: float) -> bool:
        """Whether the job is over at virtual time ``now``."""
        return now >= self.finishes_at


@attrs.define(eq=False)
class _Injection:
    fault: Fault
    remaining: int
    queue_id: str | None


@attrs.define(eq=False)
class _Context:
    """Per-request scratch state."""

    request: web.Request
    endpoint: str
    raw: bytes
    body: Any
    too_large: bool
    headers: dict[str, str] = attrs.field(factory=dict)  # added to the answer
    faults: list[str] = attrs.field(factory=list)
    credential: str | None = None
    dropped: bool = False
    drop_after: bool = False


# --- the server --------------------------------------------------------------------------


class FakeServer:
    """A real HTTP server that behaves like Venice's audio queue API.

    Use it as an async context manager (or call :meth:`start` / :meth:`close`)::

        async with FakeServer(time_scale=0.001) as server:
            client = SomeClient(base_url=server.url, api_key="test")
            ...
            assert server.count("queue") == 1

    Args:
        catalogue: model rows to serve and validate against; ``None`` uses the bundled
            2026-04-20 catalogue (:func:`load_default_catalogue`).
        api_keys: accepted Bearer keys; ``None`` accepts any non-empty key.
        time_scale: real seconds per virtual second (0.001: a 60 s job takes 60 ms).
        job_script: timeline of each queued job (or a function of the queue body returning
            one) when :meth:`plan` has nothing queued; ``None`` means ``JobScript()``.
        rate_limits: requests per 60 virtual seconds per endpoint, e.g.
            ``{"queue": 40, "retrieve": 120}``; ``None`` means unlimited.
        error_budget: ``(failures, window)``: more than ``failures`` non-2xx answers within
            ``window`` virtual seconds locks every endpoint into 429 for ``window`` seconds.
        balance_usd: starting balance; ``queue`` debits the job's price and answers 402 when
            short; ``None`` means unlimited.
        host: interface to bind.
        port: TCP port (0 picks a free one).
        clock: use this clock instead of one derived from ``time_scale`` (for example a
            :class:`~venice_audio_async._clock.ManualClock` to step job timelines by hand).

    Raises:
        ValueError: invalid rate limits, error budget, balance or time scale.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        catalogue: Sequence[Mapping[str, Any]] | None = None,
        api_keys: Collection[str] | None = None,
        time_scale: float = 1.0,
        job_script: JobScript | Callable[[Mapping[str, Any]], JobScript] | None = None,
        rate_limits: Mapping[str, int] | None = None,
        error_budget: tuple[int, float] | None = None,
        balance_usd: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        rows = load_default_catalogue() if catalogue is None else copy.deepcopy(list(catalogue))
        self._catalogue: list[dict[str, Any]] = [dict(row) for row in rows]
        self._rows: dict[str, dict[str, Any]] = {str(row["id"]): row for row in self._catalogue}
        self._api_keys = frozenset(api_keys) if api_keys is not None else None
        if clock is not None:
            self.clock: Clock = clock
        elif time_scale == 1.0:
            self.clock = SystemClock()
        else:
            self.clock = ScaledClock(time_scale)  # raises ValueError for a bad scale
        self._job_script = job_script
        self._rate_limits: dict[str, int] = {}
        for endpoint, limit in (rate_limits or {}).items():
            if endpoint not in ENDPOINTS:
                raise ValueError(f"unknown endpoint {endpoint!r} in rate_limits")
            if limit < 1:
                raise ValueError(f"rate limit for {endpoint!r} must be >= 1, got {limit!r}")
            self._rate_limits[endpoint] = limit
        if error_budget is not None and (error_budget[0] < 0 or not error_budget[1] > 0):
            raise ValueError(f"error_budget must be (failures >= 0, window > 0): {error_budget!r}")
        self._error_budget = error_budget
        if balance_usd is not None and not balance_usd >= 0:
            raise ValueError(f"balance_usd must be >= 0, got {balance_usd!r}")
        self._balance = balance_usd
        self._host = host
        self._port = port

        #: Every request received, in arrival order.
        self.requests: list[RecordedRequest] = []
        #: Every job ever queued, by queue id (in queue order).
        self.jobs: dict[str, FakeJob] = {}
        self._plan: deque[JobScript] = deque()
        self._injections: dict[str, list[_Injection]] = {endpoint: [] for endpoint in ENDPOINTS}
        self._counts: Counter[str] = Counter()
        self._windows: dict[str, deque[float]] = {
            endpoint: deque() for endpoint in self._rate_limits
        }
        self._failures: deque[float] = deque()
        self._lockout_until = -math.inf
        self._refunds: list[tuple[float, int, str]] = []  # heap of failing jobs to refund
        self._sequence = itertools.count()
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._closing: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket and start serving.

        Raises:
            RuntimeError: the server is already running.
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("FakeServer is already running")
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._add_version_header)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving and release the socket (idempotent).

        In-flight ``delay`` faults are cut short; handlers still running after a second are
        cancelled.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound TCP port.

        Raises:
            RuntimeError: the server is not running.
        """
        if self._runner is None or self._bound_port is None:
            raise RuntimeError("FakeServer is not running; use 'async with' or start()")
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:54321/api/v1``.

        Raises:
            RuntimeError: the server is not running.
        """
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{_API}"

    # -- scripting ---------------------------------------------------------------------

    def plan(self, *scripts: JobScript) -> None:
        """Queue timelines for the next jobs, first in first out (before ``job_script``)."""
        self._plan.extend(scripts)

    def inject(
        self, endpoint: str, fault: Fault, *, times: int = 1, queue_id: str | None = None
    ) -> None:
        """Make the next ``times`` requests to ``endpoint`` misbehave with ``fault``.

        With ``queue_id``, only requests whose body names that queue id count. Injections for
        one endpoint are used in the order they were made.

        Raises:
            ValueError: unknown endpoint, ``times < 1``, or an audio fault (``truncate``,
                ``content_type``) on an endpoint other than ``retrieve``.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times!r}")
        if fault.stage == "audio" and endpoint != "retrieve":
            raise ValueError(f"{fault.kind} faults only apply to 'retrieve'")
        self._injections[endpoint].append(_Injection(fault, times, queue_id))

    def pending_faults(self, endpoint: str | None = None) -> int:
        """How many injected fault uses are left (for one endpoint or all)."""
        endpoints = ENDPOINTS if endpoint is None else (endpoint,)
        return sum(item.remaining for name in endpoints for item in self._injections.get(name, []))

    # -- inspection --------------------------------------------------------------------

    def count(self, endpoint: str) -> int:
        """Number of requests received by ``endpoint`` (``unknown`` for unrouted paths)."""
        return self._counts[endpoint]

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        """The recorded requests of one endpoint, in arrival order."""
        return [record for record in self.requests if record.endpoint == endpoint]

    def queue_ids(self) -> list[str]:
        """Every queue id issued, in queue order."""
        return list(self.jobs)

    def finish_order(self) -> list[str]:
        """Queue ids ordered by the virtual time their jobs finish (ties: queue order)."""
        return sorted(self.jobs, key=lambda queue_id: self.jobs[queue_id].finishes_at)

    def peer_ports(self, endpoint: str | None = None) -> set[int]:
        """Client ports seen (for one endpoint or all): one per client connection used."""
        return {
            record.peer[1]
            for record in self.requests
            if record.peer is not None and (endpoint is None or record.endpoint == endpoint)
        }

    def audio_for(self, queue_id: str) -> bytes:
        """The exact audio bytes ``retrieve`` sends for a finished job.

        Raises:
            KeyError: no job has this id.
        """
        job = self.jobs[queue_id]
        return audio_bytes(job.audio_format, job.audio_size, seed=queue_id, id3=job.script.id3)

    @property
    def balance_usd(self) -> float | None:
        """The balance left (after refunds of jobs failed by now); ``None`` if unlimited."""
        self._settle_refunds()
        return None if self._balance is None else round(self._balance, 6)

    def model(self, model_id: str) -> dict[str, Any]:
        """The catalogue row the server uses for ``model_id``.

        Raises:
            KeyError: the model is not in the catalogue.
        """
        return self._rows[model_id]

    @property
    def catalogue(self) -> list[dict[str, Any]]:
        """The model rows served by ``GET /models``."""
        return self._catalogue

    # -- request pipeline --------------------------------------------------------------

    async def _add_version_header(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-venice-version"] = SERVER_VERSION

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = _ROUTES.get(request.path)
        endpoint = route[1] if route is not None else "unknown"
        raw, too_large = await self._read_body(request)
        body = _loads_lenient(raw)
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
            time=self.clock.monotonic(),
            status=0,
            peer=peer,
            fault=None,
        )
        index = len(self.requests)
        self.requests.append(record)
        self._counts[endpoint] += 1
        ctx = _Context(request, endpoint, raw, body, too_large)
        status = 0
        try:
            response = await self._process(ctx, route)
            status = 0 if ctx.dropped else response.status
            return response
        finally:
            self.requests[index] = attrs.evolve(
                record, status=status, fault="+".join(ctx.faults) or None
            )
            self._account(status)

    async def _read_body(self, request: web.Request) -> tuple[bytes, bool]:
        """Read the body, or stop early (``too_large``) past :data:`MAX_BODY_BYTES`."""
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return b"", True
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                return b"", True
            chunks.append(chunk)
        return b"".join(chunks), False

    async def _process(
        self, ctx: _Context, route: tuple[str, Endpoint] | None
    ) -> web.StreamResponse:
        if route is None:
            return _json_response(404, {"error": "Not found"})
        method, endpoint = route
        if ctx.request.method != method:
            return _json_response(405, {"error": "Method not allowed"}, {"Allow": method})
        self._settle_refunds()

        fault = self._take_fault(endpoint, "request", _queue_id_of(ctx.body))
        if fault is not None:
            ctx.faults.append(fault.label)
            if fault.kind == "status":
                return self._fault_response(ctx, fault)
            if fault.kind == "delay":
                if not await self._sleep(fault.seconds):
                    return self._drop(ctx)  # shutting down
            elif endpoint == "queue":
                ctx.drop_after = True  # the job is created, only the answer is lost
            else:
                return self._drop(ctx)

        response = await self._serve(ctx, endpoint)
        if ctx.drop_after:
            return self._drop(ctx)
        return response

    async def _serve(self, ctx: _Context, endpoint: Endpoint) -> web.StreamResponse:
        now = self.clock.monotonic()
        if now < self._lockout_until:
            return self._lockout_response(ctx, now)
        if endpoint in _CREDENTIALED:
            denied = self._authenticate(ctx)
            if denied is not None:
                return denied
        limited = self._rate_limit(ctx, endpoint, now)
        if limited is not None:
            return limited
        if endpoint == "models":
            return self._models(ctx)

        if ctx.too_large:
            return self._json(
                ctx,
                413,
                {"error": _STATUS_MESSAGES[413], "code": "PAYLOAD_TOO_LARGE"},
            )
        media_type = ctx.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return self._json(ctx, 400, {"error": "'Content-Type' must be 'application/json'"})
        try:
            body = _loads_strict(ctx.raw)
        except ValueError:
            return self._json(ctx, 400, {"error": "Invalid JSON request"})

        if endpoint == "quote":
            return self._quote(ctx, body)
        if endpoint == "queue":
            return self._queue(ctx, body)
        if endpoint == "retrieve":
            return await self._retrieve(ctx, body)
        return self._complete(ctx, body)

    # -- pipeline stages ---------------------------------------------------------------

    def _take_fault(self, endpoint: str, stage: str, queue_id: str | None) -> Fault | None:
        injections = self._injections[endpoint]
        for position, item in enumerate(injections):
            if item.fault.stage != stage:
                continue
            if item.queue_id is not None and item.queue_id != queue_id:
                continue
            item.remaining -= 1
            if item.remaining <= 0:
                del injections[position]
            return item.fault
        return None

    def _fault_response(self, ctx: _Context, fault: Fault) -> web.Response:
        status = fault.http_status
        headers: CIMultiDict[str] = CIMultiDict()
        if fault.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(fault.retry_after))
        if status == 429:
            wait = fault.retry_after if fault.retry_after is not None else 1.0
            limit = self._rate_limits.get(ctx.endpoint)
            if limit is not None:
                headers["x-ratelimit-limit-requests"] = str(limit)
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = str(self._epoch_ms(wait))
        headers.update(fault.headers)  # the test's own headers replace these defaults
        body = fault.body
        if body is None:
            payload: dict[str, Any] = {"error": _default_message(status, ctx.endpoint)}
            if status == 422:
                payload["suggested_prompt"] = DEFAULT_SUGGESTED_PROMPT
            body = json.dumps(payload).encode()
        headers["Content-Type"] = fault.media_type
        return web.Response(status=status, body=body, headers=headers)

    def _drop(self, ctx: _Context) -> web.Response:
        """Close the connection; aiohttp's attempt to answer then fails quietly."""
        ctx.dropped = True
        transport = ctx.request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=204)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep on the server clock; ``False`` if the server started closing meanwhile."""
        assert self._closing is not None
        if self._closing.is_set():
            return False
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({sleeper, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, closing):
                task.cancel()
            await asyncio.gather(sleeper, closing, return_exceptions=True)
        return not self._closing.is_set()

    def _lockout_response(self, ctx: _Context, now: float) -> web.Response:
        assert self._error_budget is not None
        failures, window = self._error_budget
        ctx.faults.append("error_budget")
        message = (
            f"Too many failed attempts (> {failures}) resulting in a non-success status code. "
            f"Please wait {_seconds_text(window)}s and try again."
        )
        ctx.headers["x-ratelimit-remaining"] = "0"
        ctx.headers["x-ratelimit-resets"] = str(self._epoch_ms(self._lockout_until - now))
        return self._json(ctx, 429, {"error": message})

    def _account(self, status: int) -> None:
        """Feed the error budget with a non-2xx answer (429s and drops excluded)."""
        if self._error_budget is None or status == 0 or status == 429 or 200 <= status < 300:
            return
        failures, window = self._error_budget
        now = self.clock.monotonic()
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - window:
            self._failures.popleft()
        if len(self._failures) > failures:
            self._lockout_until = now + window
            self._failures.clear()

    def _authenticate(self, ctx: _Context) -> web.Response | None:
        headers = ctx.request.headers
        wallet = headers.get("SIGN-IN-WITH-X") or headers.get("X-Sign-In-With-X")
        if wallet and wallet.strip():
            ctx.credential = f"siwx:{wallet.strip()}"  # the wallet header wins over a key
            return None
        authorization = headers.get("Authorization")
        if authorization is None or not authorization.strip():
            return self._payment_required(ctx)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self._json(ctx, 401, {"error": "Authentication failed"})
        if self._api_keys is not None and token not in self._api_keys:
            return self._json(ctx, 401, {"error": "Authentication failed"})
        ctx.credential = token
        return None

    def _payment_required(self, ctx: _Context) -> web.Response:
        """402 with an x402 discovery body (AUDIO_API.md section 9, variant a)."""
        requirement = {
            "scheme": "exact",
            "network": "eip155:8453",
            "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            "amount": "100000",
            "payTo": "0x0000000000000000000000000000000000000000",
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USD Coin", "version": "2"},
        }
        body = {
            "x402Version": 2,
            "error": "Payment required: send an API key or sign in with an x402 wallet",
            "resource": {
                "url": str(ctx.request.url),
                "description": "Venice API",
                "mimeType": "application/json",
            },
            "accepts": [requirement],
            "extensions": {
                "sign-in-with-x": {
                    "domain": "api.venice.ai",
                    "nonce": uuid.uuid4().hex,
                    "chains": ["eip155:8453", "solana:mainnet"],
                }
            },
            "authOptions": {
                "apiKey": {
                    "header": "Authorization: Bearer YOUR_API_KEY",
                    "getKey": "https://venice.ai/settings/api",
                    "docs": "https://docs.venice.ai/api-reference",
                },
                "x402Wallet": {
                    "header": "SIGN-IN-WITH-X",
                    "legacyHeader": "X-Sign-In-With-X",
                    "topUp": "POST /api/v1/x402/top-up",
                    "docs": "https://docs.venice.ai/api-reference/endpoint/x402/top-up",
                },
            },
        }
        ctx.headers["PAYMENT-REQUIRED"] = base64.b64encode(
            json.dumps({"x402Version": 2, "accepts": [requirement]}).encode()
        ).decode()
        return self._json(ctx, 402, body)

    def _rate_limit(self, ctx: _Context, endpoint: str, now: float) -> web.Response | None:
        limit = self._rate_limits.get(endpoint)
        if limit is None:
            return None
        window = self._windows[endpoint]
        while window and window[0] <= now - RATE_WINDOW:
            window.popleft()
        if len(window) >= limit:
            wait = window[0] + RATE_WINDOW - now
            ctx.faults.append("rate_limit")
            ctx.headers.update(
                {
                    "Retry-After": str(max(1, math.ceil(wait))),
                    "x-ratelimit-limit-requests": str(limit),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": str(self._epoch_ms(wait)),
                }
            )
            return self._json(ctx, 429, {"error": MSG_RATE_LIMITED})
        window.append(now)
        ctx.headers.update(
            {
                "x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": str(limit - len(window)),
                "x-ratelimit-reset-requests": str(self._epoch_ms(window[0] + RATE_WINDOW - now)),
            }
        )
        return None

    def _epoch_ms(self, seconds_from_now: float) -> int:
        """Virtual Unix epoch, in milliseconds, ``seconds_from_now`` virtual seconds ahead."""
        return int((self.clock.time() + max(0.0, seconds_from_now)) * 1000)

    def _settle_refunds(self) -> None:
        """Refund every failing job whose failure time has passed (O(log n) each)."""
        if not self._refunds:
            return
        now = self.clock.monotonic()
        while self._refunds and self._refunds[0][0] <= now:
            _, _, queue_id = heapq.heappop(self._refunds)
            job = self.jobs[queue_id]
            if not job.refunded and self._balance is not None:
                self._balance += job.cost_usd
                job.refunded = True

    # -- endpoints ---------------------------------------------------------------------

    def _models(self, ctx: _Context) -> web.Response:
        model_type = ctx.request.query.get("type", "text")
        if model_type not in _MODEL_TYPES:
            expected = " | ".join(f"'{name}'" for name in sorted(_MODEL_TYPES))
            issue = Issue(
                ("type",),
                f"Invalid enum value. Expected {expected}, received '{model_type}'",
                "invalid_enum_value",
                {"options": sorted(_MODEL_TYPES), "received": model_type},
            )
            return self._json(ctx, 400, detailed_error([issue]))
        rows = [
            row for row in self._catalogue if model_type == "all" or row.get("type") == model_type
        ]
        return self._json(ctx, 200, {"object": "list", "type": model_type, "data": rows})

    def _validate(
        self, ctx: _Context, kind: Literal["quote", "queue", "retrieve", "complete"], body: Any
    ) -> tuple[dict[str, Any] | None, web.Response | None]:
        """Schema + per-model checks: ``(row, None)`` when valid, else ``(None, answer)``."""
        issues = schema_issues(kind, body)
        model_id = body.get("model") if isinstance(body, dict) else None
        row = self._rows.get(model_id) if isinstance(model_id, str) else None
        if row is None and not issues:
            return None, self._json(ctx, 404, {"error": MSG_MODEL_NOT_FOUND})
        if row is not None and kind in ("quote", "queue"):
            issues += model_issues(kind, body, row)
        if issues:
            return None, self._json(ctx, 400, detailed_error(issues))
        assert row is not None
        return row, None

    def _quote(self, ctx: _Context, body: Any) -> web.Response:
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
        return self._json(ctx, 200, {"quote": quote})

    def _queue(self, ctx: _Context, body: Any) -> web.Response:
        row, error = self._validate(ctx, "queue", body)
        if row is None:
            assert error is not None
            return error
        price = queue_price(body, row)
        if self._balance is not None:
            if self._balance + 1e-9 < price:
                return self._json(ctx, 402, {"error": MSG_INSUFFICIENT})
            self._balance -= price
        script = self._next_script(body)
        queue_id = str(uuid.uuid4())
        audio_format = row.get("model_spec", {}).get("default_format")
        job = FakeJob(
            queue_id=queue_id,
            model=str(row["id"]),
            body=body,
            queued_at=self.clock.monotonic(),
            script=script,
            cost_usd=price,
            audio_format=audio_format if audio_format in CONTENT_TYPES else "mp3",
            credential=ctx.credential,
        )
        self.jobs[queue_id] = job
        if self._balance is not None and job.failed:
            heapq.heappush(self._refunds, (job.finishes_at, next(self._sequence), queue_id))
        self._add_balance_header(ctx)
        return self._json(ctx, 200, {"model": job.model, "queue_id": queue_id, "status": "QUEUED"})

    def _next_script(self, body: Mapping[str, Any]) -> JobScript:
        if self._plan:
            return self._plan.popleft()
        if self._job_script is None:
            return JobScript()
        if isinstance(self._job_script, JobScript):
            return self._job_script
        return self._job_script(body)

    def _job_or_error(
        self, ctx: _Context, endpoint: Literal["retrieve", "complete"], body: Any
    ) -> tuple[FakeJob, dict[str, Any], None] | tuple[None, None, web.Response]:
        """The job a retrieve/complete body names with its model row, or the error answer."""
        row, error = self._validate(ctx, endpoint, body)
        if row is None:
            assert error is not None
            return None, None, error
        job = self.jobs.get(body["queue_id"])
        if (
            job is None
            or job.model != body["model"]
            or (self._api_keys is not None and job.credential != ctx.credential)
        ):
            return None, None, self._json(ctx, 400, {"error": MSG_INVALID_ID})
        return job, row, None

    async def _retrieve(self, ctx: _Context, body: Any) -> web.StreamResponse:
        job, row, error = self._job_or_error(ctx, "retrieve", body)
        if error is not None:
            return error
        assert job is not None
        assert row is not None
        job.retrieve_count += 1
        now = self.clock.monotonic()
        if not job.done(now):
            self._add_balance_header(ctx)
            return self._json(
                ctx,
                200,
                {
                    "status": "PROCESSING",
                    "average_execution_time": round(job.script.estimate * 1000),
                    "execution_duration": round((now - job.queued_at) * 1000),
                },
            )
        if job.failed:
            self._settle_refunds()
            return self._job_failure(ctx, job)
        if job.deleted:
            return self._json(ctx, 404, {"error": MSG_MEDIA_GONE})
        if body.get("delete_media_on_completion") is True:
            job.deleted = True  # gone once the answer starts, even if the download fails
        self._add_balance_header(ctx)
        return await self._send_audio(ctx, job, row)

    def _job_failure(self, ctx: _Context, job: FakeJob) -> web.Response:
        status = job.script.fail_status
        assert status is not None
        default = _JOB_FAILURE_MESSAGES.get(status) or _default_message(status, "retrieve")
        payload: dict[str, Any] = {"error": job.script.fail_message or default}
        if status == 422:
            payload["suggested_prompt"] = job.script.suggested_prompt or DEFAULT_SUGGESTED_PROMPT
        return self._json(ctx, status, payload)

    async def _send_audio(
        self, ctx: _Context, job: FakeJob, row: Mapping[str, Any]
    ) -> web.StreamResponse:
        fault = self._take_fault("retrieve", "audio", job.queue_id)
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
            "x-venice-inference-time": _seconds_text(job.script.duration),
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
            chunks = iter_audio(
                job.audio_format,
                size,
                seed=job.queue_id,
                id3=job.script.id3,
                chunk_size=_STREAM_CHUNK,
            )
            for chunk in chunks:
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

    def _complete(self, ctx: _Context, body: Any) -> web.Response:
        job, _, error = self._job_or_error(ctx, "complete", body)
        if error is not None:
            return error
        assert job is not None
        job.complete_count += 1
        self._add_balance_header(ctx)
        if not job.done(self.clock.monotonic()):
            return self._json(ctx, 200, {"success": False})
        job.deleted = True
        job.released = True
        return self._json(ctx, 200, {"success": True})

    # -- helpers -----------------------------------------------------------------------

    def _add_balance_header(self, ctx: _Context) -> None:
        if self._balance is not None:
            ctx.headers["X-Balance-Remaining"] = f"{max(0.0, self._balance):.6f}"

    def _json(self, ctx: _Context, status: int, payload: Any) -> web.Response:
        return _json_response(status, payload, ctx.headers)


def _json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads_strict(raw: bytes) -> Any:
    """Parse like ``JSON.parse``: UTF-8 only, no ``NaN``/``Infinity``.

    Raises:
        ValueError: the body is not valid JSON.
    """
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def _loads_lenient(raw: bytes) -> Any:
    """The body as JSON for the request log, or ``None``."""
    if not raw:
        return None
    try:
        return _loads_strict(raw)
    except ValueError:
        return None


def _queue_id_of(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("queue_id"), str):
        return str(body["queue_id"])
    return None
