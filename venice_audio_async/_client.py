"""The low-level client: one method per endpoint, no state beyond the connection pool.

It neither polls nor retries (``queue`` especially: a retry could bill twice). The
:class:`~venice_audio_async.AsyncSession` builds scheduling, budgets and retries on top.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable

import attrs

from ._core.audio import AudioSink, MemorySink
from ._core.config import Limits, Timeouts
from ._core.converters import (
    structure_catalogue,
    structure_complete,
    structure_key_rate_limits,
    structure_processing,
    structure_queued,
    structure_quote,
    unstructure_request,
)
from ._core.environment import api_key_from_env, base_url_from_env
from ._core.models import (
    ApiKeyRateLimits,
    AudioModel,
    AudioResult,
    CompleteRequest,
    CompleteResult,
    Job,
    Processing,
    QueueRequest,
    QuoteRequest,
    QuoteResult,
    RetrieveRequest,
)
from ._http.transport import HttpSession, HttpTransport, JsonAnswer, require_asyncio

__all__ = ["VeniceClient"]

log = logging.getLogger("venice_audio_async")

#: ``extra_body`` field names already logged as unchecked (once per name and process).
_UNCHECKED: set[str] = set()


def _announce_unchecked(names: Iterable[str]) -> None:
    for name in names:
        if name not in _UNCHECKED:
            _UNCHECKED.add(name)
            log.info(
                "queue field %r is sent from extra_body, unchecked by this library; the API "
                "refuses a field it does not know with a 400",
                name,
            )


class VeniceClient:
    """A thin async client for the audio endpoints.

    Use it as an async context manager (or call :meth:`aclose`). Pass ``http_session`` to
    share your own :class:`aiohttp.ClientSession`; it is then left open when this client
    closes. The API key comes from ``api_key`` or the ``VENICE_API_KEY`` environment
    variable; it is never shown in ``repr``. ``base_url`` defaults to ``VENICE_BASE_URL``,
    else the public API.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        http_session: HttpSession | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        self._transport = HttpTransport(
            api_key=api_key_from_env(api_key),
            base_url=base_url_from_env(base_url),
            timeouts=timeouts or Timeouts(),
            limits=self.limits,
            session=http_session,
            allow_insecure_http=allow_insecure_http,
        )

    def __repr__(self) -> str:
        return f"<VeniceClient base_url={self._transport.base_url!r}>"

    @property
    def base_url(self) -> str:
        """The API's base URL."""
        return self._transport.base_url

    @property
    def transport(self) -> HttpTransport:
        """The HTTP layer (for the session's budget observer)."""
        return self._transport

    async def __aenter__(self) -> VeniceClient:
        """Open the client.

        Raises:
            AsyncioRequiredError: not running on asyncio (aiohttp needs it).
        """
        require_asyncio("VeniceClient")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (a borrowed ``http_session`` stays open)."""
        await self._transport.aclose()

    async def models(self) -> tuple[AudioModel, ...]:
        """``GET /models?type=music``: the audio-queue catalogue.

        Raises:
            APIStatusError: the API refused the request.
            TransportError: no usable answer (including a row that is not a model).
        """
        answer = await self._transport.request_json(
            "models", "GET", "models", params={"type": "music"}, auth=True
        )
        return structure_catalogue(answer.body)

    async def key_rate_limits(self) -> ApiKeyRateLimits:
        """``GET /api_keys/rate_limits``: the key's limits per model (RPM, RPD, TPM).

        Raises:
            AuthenticationError: the key is missing or wrong.
            APIStatusError: the API refused the request.
            TransportError: no usable answer.

        .. versionadded:: 0.1.0
        """
        answer = await self._transport.request_json(
            "key_rate_limits", "GET", "api_keys/rate_limits", auth=True
        )
        return structure_key_rate_limits(answer.body)

    async def quote(self, request: QuoteRequest) -> QuoteResult:
        """``POST /audio/quote``: the price in USD of a generation (no job is created).

        Raises:
            BadRequestError: the request does not fit the model.
            NotFoundError: unknown model.
            TransportError: no usable answer.
        """
        answer = await self._transport.request_json(
            "quote", "POST", "audio/quote", body=unstructure_request(request)
        )
        return structure_quote(answer.body)

    async def queue(self, request: QueueRequest) -> Job:
        """``POST /audio/queue``: start a generation. **This is where you are billed.**

        Never retried here. A :class:`~venice_audio_async.TransportError` whose
        ``request_sent`` is true means the job may exist and be billed.

        Raises:
            BadRequestError: the server refused the parameters.
            AuthenticationError, PaymentRequiredError, PermissionDeniedError: account issues.
            ContentPolicyError: the prompt was refused (with ``suggested_prompt``).
            RateLimitError: too many requests (``retry_after``).
            ServerError: the server failed.
            TransportError: no usable answer.
        """
        if request.extra_body:
            _announce_unchecked(request.extra_body)
        answer = await self._transport.request_json(
            "queue", "POST", "audio/queue", body=unstructure_request(request)
        )
        job = structure_queued(answer.body)
        return Job(model=job.model, queue_id=job.queue_id, request=request)

    async def retrieve(
        self, request: RetrieveRequest, *, sink: AudioSink | None = None
    ) -> Processing | AudioResult:
        """``POST /audio/retrieve``: the job's status, or its audio once finished.

        The audio goes into ``sink`` (default: memory, up to
        ``Limits.max_audio_bytes_in_memory``); use :class:`~venice_audio_async.types.FileSink`
        to stream it to disk. A status answer must arrive whole within ``Timeouts.status``;
        audio must keep ``Timeouts.min_download_rate`` and stay within
        ``Limits.max_audio_file_bytes``.

        Raises:
            InvalidQueueIdError: the id was never issued (400).
            MediaNotFoundError: the media expired or was deleted (404).
            ContentPolicyError, InferenceFailedError, ServiceUnavailableError, BadRequestError:
                the job failed.
            ResponseTooLarge: the answer exceeds its cap in ``Limits`` (JSON, audio file or
                in-memory audio); nothing partial was kept. Not worth retrying.
            RequestTimeout: no status in time, or the audio stalled; worth retrying.
            TruncatedResponse: the body was cut short; nothing partial was kept.
            TransportError: no usable answer.
        """
        target = sink if sink is not None else MemorySink(self.limits.max_audio_bytes_in_memory)
        answer = await self._transport.retrieve(unstructure_request(request), sink=target)
        if isinstance(answer, JsonAnswer):
            return structure_processing(answer.body)
        return attrs.evolve(answer, queue_id=request.queue_id, model=request.model)

    async def complete(self, request: CompleteRequest) -> CompleteResult:
        """``POST /audio/complete``: release the stored media.

        ``success`` is false while the job is still running (nothing is cancelled), true
        once released (and on repeated calls).

        Raises:
            InvalidQueueIdError: the id was never issued.
            TransportError: no usable answer.
        """
        answer = await self._transport.request_json(
            "complete", "POST", "audio/complete", body=unstructure_request(request)
        )
        return structure_complete(answer.body)
