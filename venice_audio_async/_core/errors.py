"""Every exception the library raises, in one tree.

::

    VeniceError
     ├── RequestValidationError (ValueError)      bad input, caught before any request
     ├── SessionStateError (RuntimeError)         session not open / closed, client closed
     ├── AsyncioRequiredError (RuntimeError)      used outside asyncio (trio, ...)
     ├── MissingAPIKeyError                       no key for a call that needs one
     ├── SpendLimitExceeded                       the job would exceed max_spend_usd
     ├── TransportError                           no usable HTTP answer
     │    ├── ConnectError                        could not connect (nothing was sent)
     │    ├── RequestTimeout (TimeoutError)       no answer in time
     │    ├── ConnectionDropped                   the connection broke before/while answering
     │    ├── TruncatedResponse                   body shorter than announced
     │    ├── MalformedResponse                   answer not in the documented shape
     │    └── ResponseTooLarge                    answer above its configured cap (not retried)
     ├── QueueOutcomeUnknown                      `queue` may have been billed; not retried
     ├── AudioStorageError                        the audio could not be written (disk, sink)
     ├── BatchSubmitError                         some queue calls of submit_many failed
     ├── JournalError                             the journal cannot be used (in use by
     │                                            another owner, damaged, read-only);
     │                                            raised before anything is sent
     ├── APIStatusError                           the API answered an HTTP error
     │    ├── BadRequestError            400      (details / issues)
     │    │    └── InvalidQueueIdError   400      "Request ID is invalid."
     │    ├── AuthenticationError        401
     │    ├── PaymentRequiredError       402
     │    ├── PermissionDeniedError      403
     │    ├── NotFoundError              404
     │    │    └── MediaNotFoundError    404      media expired or deleted
     │    ├── PayloadTooLargeError       413
     │    ├── ContentPolicyError         422      (suggested_prompt)
     │    ├── RateLimitError             429      (retry_after)
     │    └── ServerError                5xx
     │         ├── InferenceFailedError  500
     │         └── ServiceUnavailableError 503
     ├── QueueDeadlineExceeded (TimeoutError)     no queue token before the deadline; unsent
     ├── JobDeadlineExceeded (TimeoutError)       a job outlived its deadline; queue_id kept
     └── JobUnreachable                           no word from the API on a job for
                                                  RetryPolicy.unreachable_after; kept

A failed generation on ``retrieve`` is an :class:`APIStatusError` (the API reports job
failures as HTTP errors, never as a JSON status).

None of these carry the API key: the transport redacts the ``Authorization`` header before
any header mapping reaches an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import FieldProblem, Job, QueueRequest

__all__ = [
    "APIStatusError",
    "AsyncioRequiredError",
    "AudioStorageError",
    "AuthenticationError",
    "BadRequestError",
    "BatchSubmitError",
    "ConnectError",
    "ConnectionDropped",
    "ContentPolicyError",
    "InferenceFailedError",
    "InvalidQueueIdError",
    "JobDeadlineExceeded",
    "JobUnreachable",
    "drop_tracebacks",
    "JournalError",
    "MalformedResponse",
    "MediaNotFoundError",
    "MissingAPIKeyError",
    "NotFoundError",
    "OutcomeAlreadyTaken",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "QueueDeadlineExceeded",
    "QueueOutcomeUnknown",
    "RateLimitError",
    "RequestTimeout",
    "RequestValidationError",
    "ResponseTooLarge",
    "ServerError",
    "ServiceUnavailableError",
    "SessionStateError",
    "SpendLimitExceeded",
    "TransportError",
    "TruncatedResponse",
    "VeniceError",
    "error_from_response",
]

#: Response headers worth keeping on an error (support asks for them); everything else is
#: dropped so no secret or noise travels with the exception.
_SUPPORT_HEADERS = (
    "x-venice-version",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining",
    "x-ratelimit-resets",
    "x-ratelimit-type",
    "cf-ray",
    "x-request-id",
    "content-type",
)


class VeniceError(Exception):
    """Base class of every exception raised by this library.

    Every one pickles with its fields (for process pools and task queues): it is rebuilt
    from its message and attributes, without calling ``__init__`` (whose keyword-only
    arguments the default exception pickling cannot pass).

    .. versionadded:: 0.1.0
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # ``__cause__``, ``__context__`` and the traceback are not pickled (as for any
        # exception); fields that hold data (``cause``, ``job``, ``errors``) are.
        return (_rebuild, (type(self), self.args), self.__dict__ or None)


class RequestValidationError(VeniceError, ValueError):
    """A request broke the model's rules; raised before anything is sent.

    ``problems`` lists every problem found, field by field, so one round of fixes suffices.

    .. versionadded:: 0.1.0
    """

    def __init__(self, problems: tuple[FieldProblem, ...], *, model: str | None = None) -> None:
        self.problems = problems
        self.model = model
        lines = "\n".join(f"  - {p.field}: {p.message}" for p in problems)
        where = f" for model {model!r}" if model else ""
        super().__init__(f"{len(problems)} problem(s) in the request{where}:\n{lines}")


class SessionStateError(VeniceError, RuntimeError):
    """The session is used while not open (before ``async with`` or after closing), or a
    :class:`~venice_audio_async.VeniceClient` after it was closed.

    .. versionadded:: 0.1.0
    """


class AsyncioRequiredError(VeniceError, RuntimeError):
    """The session or client is used outside asyncio, for example under trio.

    aiohttp, which carries every request, runs only on asyncio; this is raised when the
    session (or client) is opened, instead of aiohttp's "no running event loop" at the
    first request. Run it with ``asyncio.run`` or ``anyio.run(..., backend="asyncio")``.

    .. versionadded:: 0.1.0
    """


class MissingAPIKeyError(VeniceError):
    """No API key was given (``api_key=`` or ``VENICE_API_KEY``) for a call that needs one.

    Raised before anything is sent: an unauthenticated ``queue`` would only earn a 402.

    .. versionadded:: 0.1.0
    """


class SpendLimitExceeded(VeniceError):
    """Queueing this job would take the session past its ``max_spend_usd``; nothing was sent.

    .. versionadded:: 0.1.0
    """

    def __init__(self, message: str, *, estimate_usd: float, spent_usd: float, limit_usd: float):
        super().__init__(message)
        self.estimate_usd = estimate_usd
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd


class TransportError(VeniceError):
    """No usable HTTP answer was received.

    ``request_sent`` tells whether the request may have reached the server: ``False`` only when
    it certainly did not (for ``queue`` this decides whether a retry could double-bill).

    .. versionadded:: 0.1.0
    """

    def __init__(self, message: str, *, endpoint: str | None = None, request_sent: bool = True):
        super().__init__(message)
        self.endpoint = endpoint
        self.request_sent = request_sent


class ConnectError(TransportError):
    """The connection could not be made (refused, DNS failure, TLS); nothing was sent."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message, endpoint=endpoint, request_sent=False)


class RequestTimeout(TransportError, TimeoutError):
    """No (complete) answer arrived within the configured timeout."""


class ConnectionDropped(TransportError):
    """The server closed the connection before or while answering."""


class TruncatedResponse(TransportError):
    """The body ended before the announced ``Content-Length``; nothing partial was kept."""


class MalformedResponse(TransportError):
    """The answer is not in the documented shape (bad JSON, unknown content type, ...)."""


class ResponseTooLarge(TransportError):
    """An answer is larger than its cap in :class:`~venice_audio_async.Limits`.

    A JSON answer above ``max_json_bytes``, an audio file above ``max_audio_file_bytes``, or
    audio kept in memory above ``max_audio_bytes_in_memory``. The body was not read past the
    cap and nothing partial was kept. It is not retried (the answer would be as large
    again), and a job that fails with it keeps its media on the server.
    """


class QueueOutcomeUnknown(VeniceError):
    """``queue`` failed after the request was sent: the job may exist and may be billed.

    It is never retried automatically. ``request`` is what was sent, so the caller can decide
    (check the dashboard, re-queue knowingly); ``cause`` (also ``__cause__``) is the transport
    error, or the 502/504 a gateway answered (the origin may have created the job first).

    .. versionadded:: 0.1.0
    """

    def __init__(self, request: QueueRequest, cause: VeniceError) -> None:
        self.request = request
        self.cause = cause
        super().__init__(
            f"queue for model {request.model!r} failed after the request was sent ({cause}); "
            "the job may have been created and billed, so it was not retried"
        )


class AudioStorageError(VeniceError):
    """Finished audio could not be stored (disk full, bad destination, a sink's failure).

    Only that job fails; its media stays on the server (it is not released), so it can be
    fetched again with ``attach``. ``__cause__`` is the underlying error.

    .. versionadded:: 0.1.0
    """


class BatchSubmitError(VeniceError):
    """Some requests of ``submit_many`` failed; the others were queued and are polled.

    ``jobs[i]`` is the job of request ``i`` (``None`` where it failed) and ``errors[i]`` the
    error of each failed one: keep the jobs, they were paid for.

    .. versionadded:: 0.1.0
    """

    def __init__(self, jobs: list[Job | None], errors: dict[int, VeniceError]) -> None:
        self.jobs = jobs
        self.errors = errors
        first = next(iter(errors.items()))
        super().__init__(
            f"{len(errors)} of {len(jobs)} submits failed (first: request {first[0]}: "
            f"{first[1]}); {len(jobs) - len(errors)} were queued"
        )


class JournalError(VeniceError):
    """The job journal cannot be used: nothing was sent because of it.

    Raised when the journal is held by another owner (``holder_pid`` names that process),
    is damaged, empty, read-only or not a journal at all, or when a write that must come
    before a paid request (the job's intent, its claim) fails. A write that fails *after*
    ``queue`` answered is never raised: the job is returned and the write retried (see
    docs/journal.md). ``path`` is the journal file.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, message: str, *, path: str | None = None, holder_pid: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.holder_pid = holder_pid


class OutcomeAlreadyTaken(VeniceError, ValueError):
    """The job's outcome was already handed over by this session (``results()`` or
    ``wait_for``); the session keeps no copy, so it cannot be delivered again.

    .. versionadded:: 0.1.0
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(
            f"the outcome of job {job.queue_id} ({job.model}) was already taken from this "
            "session; it is not kept after it is handed over"
        )


class JobDeadlineExceeded(VeniceError, TimeoutError):
    """A job did not finish before its deadline. It was paid for: keep ``job.queue_id``.

    The job can be picked up later with ``AsyncSession.attach(job.model, job.queue_id)``.

    .. versionadded:: 0.1.0
    """

    def __init__(self, job: Job, waited: float) -> None:
        self.job = job
        self.waited = waited
        super().__init__(
            f"job {job.queue_id} ({job.model}) not finished after {waited:.1f}s; "
            "it is still running on the server and can be attached later"
        )


class JobUnreachable(VeniceError):
    """The API gave no verdict on a paid job for ``RetryPolicy.unreachable_after`` seconds.

    Every poll of that stretch failed in transit (dropped connections, timeouts, a
    gateway's 502 / 504, answers that were not the API's JSON) or met a 500 / 503 that
    never settled into the same answer repeated, so the job was not judged:
    it may well be finished, its media waiting on the server. Keep ``job.queue_id``. With a
    journal the job stays "queued" and ``resume`` fetches it; without one, pick it up with
    ``AsyncSession.attach(job.model, job.queue_id)``. ``waited`` is the seconds without an
    answer; ``last_error`` (also ``__cause__``) the last poll's failure.

    .. versionadded:: 0.2.0
    """

    def __init__(self, job: Job, waited: float, last_error: VeniceError) -> None:
        self.job = job
        self.waited = waited
        self.last_error = last_error
        super().__init__(
            f"job {job.queue_id} ({job.model}): no verdict from the API for {waited:.1f}s "
            f"(last: {type(last_error).__name__}: {last_error}); it was paid for and may be "
            "finished: fetch it later (resume, or attach with its queue_id)"
        )
        self.__cause__ = last_error


class QueueDeadlineExceeded(VeniceError, TimeoutError):
    """The deadline would pass before a ``queue`` token: the request was refused, unsent.

    Nothing was sent or billed. ``request`` is the request refused; ``waited`` the seconds
    spent waiting for the token.

    .. versionadded:: 0.1.0
    """

    def __init__(self, request: QueueRequest, waited: float) -> None:
        self.request = request
        self.waited = waited
        super().__init__(
            f"no queue token in time for {request.model} (waited {waited:.1f}s); nothing was sent"
        )


class APIStatusError(VeniceError):
    """The API answered with an HTTP error status.

    Attributes: ``status_code``, ``message`` (the server's ``error`` text), ``body`` (parsed
    JSON, or the text when it was not JSON), ``headers`` (support-relevant response headers
    such as ``x-venice-version``), ``endpoint``.

    .. versionadded:: 0.1.0
    """

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.body = body
        self.headers: Mapping[str, str] = dict(headers or {})
        self.endpoint = endpoint
        where = f" on {endpoint}" if endpoint else ""
        super().__init__(f"HTTP {status_code}{where}: {message}")

    @property
    def version(self) -> str | None:
        """The server's ``x-venice-version``, useful in support requests."""
        return self.headers.get("x-venice-version")


class BadRequestError(APIStatusError):
    """400: the request was refused. ``details`` and ``issues`` hold the server's reasons.

    ``details`` is the Zod-style tree (or a plain string: the API sends both shapes).
    """

    @property
    def details(self) -> Any:
        return self.body.get("details") if isinstance(self.body, Mapping) else None

    @property
    def issues(self) -> list[Any]:
        issues = self.body.get("issues") if isinstance(self.body, Mapping) else None
        return list(issues) if isinstance(issues, list) else []


class InvalidQueueIdError(BadRequestError):
    """400 "Request ID is invalid.": the server never issued this queue_id (or not to you)."""


class AuthenticationError(APIStatusError):
    """401: the key was refused, or the model needs a Pro account."""


class PaymentRequiredError(APIStatusError):
    """402: no credentials, insufficient balance, or a spend limit reached."""


class PermissionDeniedError(APIStatusError):
    """403: the key's privacy setting or the region forbids this model."""


class NotFoundError(APIStatusError):
    """404: unknown model, or media no longer stored."""


class MediaNotFoundError(NotFoundError):
    """404 on retrieve: the media expired or was deleted (``complete`` or delete-on-completion)."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is too large."""


class ContentPolicyError(APIStatusError):
    """422: the prompt violates the content policy. The job was refunded.

    ``suggested_prompt`` is the server's rewrite when it offered one.
    """

    @property
    def suggested_prompt(self) -> str | None:
        value = self.body.get("suggested_prompt") if isinstance(self.body, Mapping) else None
        return value if isinstance(value, str) else None


class RateLimitError(APIStatusError):
    """429: too many requests. ``retry_after`` is the delay (seconds) the server asked for."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, status_code=status_code, body=body, headers=headers, endpoint=endpoint
        )
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server or the model failed."""


class InferenceFailedError(ServerError):
    """500: the generation failed (refunded)."""


class ServiceUnavailableError(ServerError):
    """503: the model is at capacity or offline."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: ContentPolicyError,
    429: RateLimitError,
    500: InferenceFailedError,
    503: ServiceUnavailableError,
}


def _parse_body(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def support_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The subset of response headers kept on errors and results (never ``Authorization``)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return {name: lowered[name] for name in _SUPPORT_HEADERS if name in lowered}


def error_from_response(
    status: int,
    raw_body: bytes,
    headers: Mapping[str, str],
    *,
    endpoint: str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """Build the most specific :class:`APIStatusError` for an HTTP error answer.

    Works whatever the body is: JSON with ``error`` (and ``details`` as a tree or a string),
    JSON without it, HTML from a proxy, or nothing at all. ``retry_after`` (seconds, read
    from the headers by the transport) goes on a :class:`RateLimitError`.
    """
    body = _parse_body(raw_body) if raw_body else None
    message: str | None = None
    if isinstance(body, Mapping):
        error = body.get("error")
        message = error if isinstance(error, str) else None
        if message is None and isinstance(body.get("message"), str):
            message = body["message"]
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:200]
    if not message:
        message = f"HTTP {status} with no error message"

    kept = support_headers(headers)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIStatusError
    if status == 400 and message.strip().startswith("Request ID is invalid"):
        cls = InvalidQueueIdError
    elif status == 404 and "Media could not be found" in message:
        cls = MediaNotFoundError
    elif status == 404 and endpoint == "retrieve" and "model" not in message.lower():
        # [UNK] other 404 wordings on retrieve: anything but "model not found" is media gone.
        cls = MediaNotFoundError
    if cls is RateLimitError:
        return RateLimitError(
            message,
            status_code=status,
            body=body,
            headers=kept,
            endpoint=endpoint,
            retry_after=retry_after,
        )
    return cls(message, status_code=status, body=body, headers=kept, endpoint=endpoint)


def _rebuild(cls: type[VeniceError], args: tuple[Any, ...]) -> VeniceError:
    """An unpickled error: its class and message; the pickle then restores its fields."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error


def drop_tracebacks(error: BaseException) -> None:
    """Detach the scheduler's frames from an error handed over as data.

    A ``Failed`` outcome may be kept for long; its traceback's frames would keep the
    scheduler, the transport and through them the whole (closed) session alive. The error
    chain and messages stay; ``wait_for`` re-raising it starts a fresh traceback.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
