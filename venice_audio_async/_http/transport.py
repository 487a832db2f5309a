"""The transport: one aiohttp session, and each request from sending to a usable answer.

:class:`HttpTransport` owns one :class:`aiohttp.ClientSession` with one connector (or borrows
the caller's, which it then never closes), sends JSON requests with bearer auth, turns an
error status and every aiohttp/asyncio failure into this library's errors
(``raise ... from exc``, via ``_http.failures``), and reports each answer to an observer.

``retrieve`` is special: the same endpoint answers JSON while the job runs and the raw audio
when it is done, so the answer is branched on its media type, never parsed blindly, and
audio is streamed into an :class:`~._core.audio.AudioSink` (``_http.body``).

Every answer is bounded by ``Limits`` and ``Timeouts``: bodies by their size caps and the
download pace (``_http.body``); a status answer must arrive whole within ``Timeouts.status``.

Redirects are never followed: a 3xx would otherwise carry the ``Authorization`` header to
wherever it points.

Only this module and ``_http.failures`` import aiohttp (``tests/test_architecture.py``);
the layers above name a caller's session as :data:`HttpSession`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import platform
import types
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import aiohttp
import attrs
from yarl import URL

from .._core.audio import AudioSink
from .._core.config import Limits, Timeouts
from .._core.errors import (
    AsyncioRequiredError,
    RequestTimeout,
    SessionStateError,
    TransportError,
    VeniceError,
)
from .._core.logging import configure_from_environment
from .._core.models import AudioResult
from .._core.version import __version__
from .body import read_json, stream_audio
from .deadline import status_deadline
from .failures import status_error, transport_error
from .log import RequestOutcome, logged, queue_id_in

__all__ = ["HttpSession", "HttpTransport", "JsonAnswer", "ResponseObserver", "require_asyncio"]


class ResponseObserver(Protocol):
    """Awaited with (endpoint, status, headers) for every answer, and (endpoint, 0, {}) for
    a transport failure, before the answer (or its error) is handed over: the request
    budget learns from it (see ``_rate.budget.ResponseRecorder``). An error answer also
    gives the API's ``message`` and the request's ``model`` (429s differ only by message).
    """

    def __call__(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> Awaitable[None]: ...


#: A caller's own aiohttp session, for the layers above to name without importing aiohttp.
HttpSession = aiohttp.ClientSession


@attrs.frozen
class JsonAnswer:
    """A successful JSON answer."""

    status: int
    headers: Mapping[str, str]
    body: Any


def _version() -> str:
    return __version__


def _running_library() -> str:
    """The name of the async library running the caller, as well as can be told."""
    try:
        import sniffio  # installed with trio; not a dependency of ours

        return str(sniffio.current_async_library())
    except Exception:  # not installed, or no library it knows
        return "another event loop, or none"


def require_asyncio(what: str) -> None:
    """Refuse to go on outside an asyncio task: aiohttp runs only on asyncio.

    Raises:
        AsyncioRequiredError: the caller runs under trio (or no event loop at all).
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running asyncio loop in this thread
        task = None
    if task is None:
        raise AsyncioRequiredError(
            f"{what} needs asyncio: aiohttp, which sends every request, runs only on "
            f"asyncio, and this code runs under {_running_library()}. Start it with "
            "asyncio.run(...) or anyio.run(..., backend='asyncio')"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, *, allow_insecure_http: bool) -> URL:
    """Parse the base URL; refuse plain ``http://`` to anything but loopback unless allowed.

    Raises:
        ValueError: the URL is not http(s), or is plain http to a remote host.
    """
    url = URL(base_url.rstrip("/"))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    if url.scheme == "http" and not _is_loopback(url.host) and not allow_insecure_http:
        raise ValueError(
            f"refusing plain http to {url.host}: the API key would travel unencrypted; "
            "use https, or pass allow_insecure_http=True if you really mean it"
        )
    return url


class HttpTransport:
    """One connection pool and the error mapping; see the module docstring.

    The API key is held privately and never shown by ``repr``.
    """

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str,
        timeouts: Timeouts,
        limits: Limits,
        session: aiohttp.ClientSession | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        configure_from_environment()  # VENICE_AUDIO_LOG, read once per process
        self._api_key = api_key
        self._base = check_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self._timeouts = timeouts
        self._limits = limits
        self._session = session
        self._owns_session = session is None
        self._observer: ResponseObserver | None = None
        self._closed = False
        self.user_agent = (
            f"venice-audio-async/{_version()} aiohttp/{aiohttp.__version__} "
            f"python/{platform.python_version()}"
        )
        # Per-request constants, built once (a poll is sent many times a second).
        self._header_cache: dict[bool, tuple[str, dict[str, str]]] = {}
        self._timeout_of = {d: self._timeout(download=d) for d in (False, True)}
        self._urls: dict[str, URL] = {}

    def __repr__(self) -> str:
        return f"<HttpTransport base_url={str(self._base)!r} closed={self._closed}>"

    @property
    def base_url(self) -> str:
        return str(self._base)

    def set_observer(self, observer: ResponseObserver | None) -> None:
        """Install the callback that sees every answer's status and headers."""
        self._observer = observer

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise SessionStateError("the client is closed; create a new one")
        if self._session is None:
            require_asyncio("VeniceClient")
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections,
                limit_per_host=self._limits.max_connections,
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def aclose(self) -> None:
        """Close the pool if we created it; a borrowed session is left open."""
        if self._closed:
            return
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _headers(self, *, auth: bool) -> dict[str, str]:
        # Built once per (auth, user agent), not per request: aiohttp copies them anyway.
        cached = self._header_cache.get(auth)
        if cached is not None and cached[0] == self.user_agent:
            return cached[1]
        headers = {"User-Agent": self.user_agent, "Accept": "application/json, audio/*"}
        if auth and self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._header_cache[auth] = (self.user_agent, headers)
        return headers

    async def _notify(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        if self._observer is not None:
            # The observer keeps what an answer taught even if this caller is being
            # cancelled meanwhile (ResponseRecorder shields a shared store's round trip).
            await self._observer(endpoint, status, headers, message=message, model=model)

    def _timeout(self, *, download: bool) -> aiohttp.ClientTimeout:
        t = self._timeouts
        return aiohttp.ClientTimeout(
            total=t.download if download else t.request,
            sock_connect=t.connect,
            sock_read=t.read,
        )

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._base / path
            if len(self._urls) < 64:  # the endpoints' few paths
                self._urls[path] = url
        return url

    def _exchange(
        self,
        outcome: RequestOutcome,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        download: bool = False,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> _Exchange:
        """One request: ``async with`` yields a successful response and its headers
        (lower-case names); error statuses and every aiohttp or asyncio failure (also while
        the caller reads the body) become our exceptions. The observer hears of each
        outcome exactly once."""
        options = {
            "json": body,
            "params": params,
            "headers": self._headers(auth=auth),
            "allow_redirects": False,
            "timeout": self._timeout_of[download] if timeout is None else timeout,
        }
        return _Exchange(self, outcome, method, self._url(path), options)

    async def _json_answer(
        self, endpoint: str, response: aiohttp.ClientResponse, headers: dict[str, str]
    ) -> JsonAnswer:
        body = await read_json(
            response.content,
            endpoint=endpoint,
            content_length=response.content_length,
            cap=self._limits.max_json_bytes,
        )
        return JsonAnswer(status=response.status, headers=headers, body=body)

    async def request_json(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> JsonAnswer:
        """Send one request and return its JSON answer.

        Raises:
            APIStatusError: the API answered an error status (the most specific subclass).
            TransportError: no usable answer (connect, timeout, dropped, malformed).
        """
        with logged(RequestOutcome(endpoint, queue_id_in(body))) as outcome:
            async with self._exchange(
                outcome, method, path.lstrip("/"), body=body, params=params, auth=auth
            ) as (response, headers):
                answer = await self._json_answer(endpoint, response, headers)
            if outcome.queue_id is None and isinstance(answer.body, dict):
                outcome.queue_id = queue_id_in(answer.body)  # queue: the id just issued
        return answer

    async def retrieve(
        self, body: Mapping[str, Any], *, sink: AudioSink
    ) -> JsonAnswer | AudioResult:
        """``POST /audio/retrieve``: JSON status while running, streamed audio when done.

        Raises:
            APIStatusError: the job failed, or the id is unknown/expired.
            RequestTimeout: no status within ``Timeouts.status``, or the audio came slower
                than ``Timeouts.min_download_rate`` (the sink is aborted).
            ResponseTooLarge: the JSON or the audio is over its cap in ``Limits`` (the
                sink is aborted, nothing partial remains).
            TransportError: no usable answer; ``TruncatedResponse`` if the body was cut
                short (the sink is aborted, nothing partial remains).
            AudioStorageError: the sink could not store the audio (the original error is
                the ``__cause__``); nothing partial remains.
        """
        with logged(RequestOutcome("retrieve", queue_id_in(body))) as outcome:
            return await self._retrieve(body, sink, outcome)

    async def _retrieve(
        self, body: Mapping[str, Any], sink: AudioSink, outcome: RequestOutcome
    ) -> JsonAnswer | AudioResult:
        endpoint = outcome.endpoint
        limit = self._timeouts.status
        # The status deadline covers the wait for headers and a JSON body; once audio
        # starts it is lifted, and the download rules (cap, pace, ``download``) apply.
        deadline_at = None if limit is None else asyncio.get_running_loop().time() + limit
        status_scope = status_deadline(deadline_at)
        exchange = self._exchange(outcome, "POST", "audio/retrieve", body=body, download=True)
        try:
            async with status_scope, exchange as (response, headers):
                media_type = response.content_type.lower()
                if media_type == "application/json":
                    answer = await self._json_answer(endpoint, response, headers)
                else:
                    status_scope.reschedule(None)
                    audio = await stream_audio(
                        response.content,
                        media_type=media_type,
                        content_length=response.content_length,
                        headers=headers,
                        sink=sink,
                        cap=self._limits.max_audio_file_bytes,
                        timeouts=self._timeouts,
                    )
                    outcome.detail = f"{audio.format} audio, {audio.size} bytes"
                    return audio
        except TimeoutError as exc:
            # Ours (RequestTimeout) are TimeoutErrors too: only the deadline's own is mapped.
            if isinstance(exc, VeniceError) or not status_scope.expired():
                raise
            await self._notify(endpoint, 0, {})
            raise RequestTimeout(
                f"{endpoint} request to {self._base.host}: no status answer within "
                f"{limit} s (Timeouts.status)",
                endpoint=endpoint,
            ) from None
        if isinstance(answer.body, dict):
            outcome.detail = str(answer.body.get("status", ""))
        return answer


_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError)


class _Exchange:
    """:meth:`HttpTransport._exchange` as a class: it wraps every request, and a class
    costs a quarter of what an ``asynccontextmanager`` generator does."""

    __slots__ = ("_method", "_options", "_outcome", "_request", "_transport", "_url", "answer")

    def __init__(
        self,
        transport: HttpTransport,
        outcome: RequestOutcome,
        method: str,
        url: URL,
        options: dict[str, Any],
    ) -> None:
        self._transport = transport
        self._outcome = outcome
        self._method = method
        self._url = url
        self._options = options

    def _failed(self, exc: BaseException) -> TransportError:
        return transport_error(self._outcome.endpoint, self._transport._base.host, exc)

    async def __aenter__(self) -> tuple[aiohttp.ClientResponse, dict[str, str]]:
        transport, outcome = self._transport, self._outcome
        endpoint = outcome.endpoint
        try:
            self._request = transport._client().request(self._method, self._url, **self._options)
            response = await self._request.__aenter__()
            headers = {k.lower(): v for k, v in response.headers.items()}
            outcome.status = response.status
            if response.status >= 300:
                try:
                    error = await status_error(endpoint, response.status, headers, response.content)
                    body = self._options.get("json")
                    model = body.get("model") if isinstance(body, Mapping) else None
                    await transport._notify(
                        endpoint,
                        response.status,
                        headers,
                        message=error.message,
                        model=model if isinstance(model, str) else None,
                    )
                except BaseException as exc:
                    await self._request.__aexit__(type(exc), exc, exc.__traceback__)
                    raise
                await self._request.__aexit__(type(error), error, None)
                raise error
        except VeniceError:
            raise  # already ours (some are TimeoutErrors: not to be translated again)
        except _FAILURES as exc:
            await transport._notify(endpoint, 0, {})
            raise self._failed(exc) from exc
        self.answer = (response, headers)
        return self.answer

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        transport, endpoint = self._transport, self._outcome.endpoint
        response, headers = self.answer
        try:
            if isinstance(exc, VeniceError):
                # The server answered; what we did with the body failed (storage, a body
                # that is not audio, over a cap): the request still counts.
                await transport._notify(endpoint, response.status, headers)
            await self._request.__aexit__(exc_type, exc, tb)
        except VeniceError:
            raise
        except _FAILURES as failure:
            await transport._notify(endpoint, 0, {})
            raise self._failed(failure) from failure
        if exc is None:
            await transport._notify(endpoint, response.status, headers)
        elif isinstance(exc, _FAILURES) and not isinstance(exc, VeniceError):
            await transport._notify(endpoint, 0, {})
            raise self._failed(exc) from exc
        # Anything else the body raised (ours, a cancellation) goes on as it is.
