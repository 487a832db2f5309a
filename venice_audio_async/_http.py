"""The only module that knows aiohttp.

:class:`HttpTransport` owns one :class:`aiohttp.ClientSession` with one connector (or borrows
the caller's, which it then never closes), sends JSON requests with bearer auth, and turns
every aiohttp/asyncio failure into this library's errors (``raise ... from exc``).

``retrieve`` is special: the same endpoint answers JSON while the job runs and the raw audio
when it is done, so the answer is branched on its media type, never parsed blindly, and
audio is streamed into an :class:`~venice_audio_async._audio.AudioSink` chunk by chunk.

Every answer is bounded by ``Limits`` and ``Timeouts``: a JSON body is read up to
``max_json_bytes`` and an audio body up to ``max_audio_file_bytes`` (never a byte more than
the cap plus one; a ``Content-Length`` over it is refused before reading); a status answer
must arrive whole within ``Timeouts.status``; audio must keep ``Timeouts.min_download_rate``
over each ``stall_window``.

Redirects are never followed: a 3xx would otherwise carry the ``Authorization`` header to
wherever it points.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp
import anyio
import attrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._audio import AudioSink, sniff_format, sniff_needs
from ._config import Limits, Timeouts
from ._errors import (
    APIStatusError,
    AsyncioRequiredError,
    AudioStorageError,
    ConnectError,
    ConnectionDropped,
    MalformedResponse,
    RequestTimeout,
    ResponseTooLarge,
    SessionStateError,
    TransportError,
    TruncatedResponse,
    VeniceError,
    error_from_response,
    support_headers,
)
from ._logging import RequestAttempt, configure_from_environment, current_attempt, log
from ._models import AudioResult, VeniceHeaders, format_for_media_type
from ._retry import parse_retry_after

__all__ = ["HttpSession", "HttpTransport", "JsonAnswer", "ResponseObserver", "require_asyncio"]

#: Awaited with (endpoint, status, headers) for every answer, and (endpoint, 0, {}) for a
#: transport failure, before the answer (or its error) is handed over: the request budget
#: learns from it (see ``_budget.ResponseRecorder``).
ResponseObserver = Callable[[str, int, Mapping[str, str]], Awaitable[None]]

#: A caller's own aiohttp session, for the layers above to name without importing aiohttp.
HttpSession = aiohttp.ClientSession

_ERROR_BODY_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
_REDACTED = "[redacted]"

T = TypeVar("T")


@attrs.define
class _Outcome:
    """What one request's log record says; filled in as the request goes."""

    endpoint: str
    queue_id: str | None = None
    status: int = 0
    detail: str = ""


def _queue_id_in(body: Mapping[str, Any] | None) -> str | None:
    value = body.get("queue_id") if body is not None else None
    return value if isinstance(value, str) else None


def _log_outcome(
    outcome: _Outcome,
    attempt: RequestAttempt | None,
    elapsed: float,
    error: BaseException | None,
) -> None:
    """One DEBUG record per request outcome: a readable line plus structured ``extra``."""
    if not log.isEnabledFor(logging.DEBUG):
        return  # the common case: nothing is built
    where = []
    if outcome.queue_id is not None:
        where.append(f"job {outcome.queue_id}")
    if attempt is not None:
        where.append(f"attempt {attempt.attempt}")
        if attempt.wait is not None and attempt.wait >= 0.01:  # else not worth a mention
            where.append(f"waited {attempt.wait:.3g} s for a token")
    status = str(outcome.status) if outcome.status else "no answer"
    what = type(error).__name__ if error is not None else outcome.detail
    log.debug(
        "%s %s%s%s in %.3f s",
        outcome.endpoint,
        status,
        f" ({', '.join(where)})" if where else "",
        f": {what}" if what else "",
        elapsed,
        extra={
            "endpoint": outcome.endpoint,
            "status": outcome.status,
            "queue_id": outcome.queue_id,
            "attempt": attempt.attempt if attempt is not None else None,
            "wait": attempt.wait if attempt is not None else None,
            "elapsed": elapsed,
            "error": type(error).__name__ if error is not None else None,
        },
    )


@contextlib.contextmanager
def _logged(outcome: _Outcome) -> Iterator[_Outcome]:
    """Log the request made inside once it has an outcome (not when it is cancelled)."""
    attempt = current_attempt()
    started = time.monotonic()
    try:
        yield outcome
    except VeniceError as error:
        _log_outcome(outcome, attempt, time.monotonic() - started, error)
        raise
    _log_outcome(outcome, attempt, time.monotonic() - started, None)


@attrs.frozen
class JsonAnswer:
    """A successful JSON answer."""

    status: int
    headers: Mapping[str, str]
    body: Any


def _version() -> str:
    from . import __version__

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


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
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


def _redact(exc: BaseException) -> None:
    """Blank our ``Authorization`` header in the aiohttp exceptions chained to ``exc``.

    ``ClientResponseError`` (raised for an unparsable answer) keeps the request's headers in
    its ``request_info`` and ``args``; ours chain to it with ``from``, so without this the key
    would travel with every such error.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientResponseError):
            info = current.request_info
            if "Authorization" in info.headers:
                headers = CIMultiDict(info.headers)
                headers["Authorization"] = _REDACTED
                clean = aiohttp.RequestInfo(
                    info.url, info.method, CIMultiDictProxy(headers), info.real_url
                )
                current.request_info = clean
                current.args = tuple(clean if arg is info else arg for arg in current.args)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


async def _store(call: Awaitable[T]) -> T:
    """Await a sink operation; any storage failure becomes an :class:`AudioStorageError`.

    So a full disk or a bad destination fails that one download (the scheduler reports the
    job as failed and keeps its media on the server) instead of escaping as a bare
    ``OSError`` that nothing above expects.
    """
    try:
        return await call
    except VeniceError:
        raise
    except Exception as exc:  # a custom sink's bug must fail one job, not the session
        raise AudioStorageError(f"could not store the audio: {exc!r}") from exc


def _headers_of(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()}


def _venice_headers(headers: Mapping[str, str]) -> VeniceHeaders:
    def number(name: str) -> float | None:
        try:
            return float(headers[name])
        except (KeyError, ValueError):
            return None

    return VeniceHeaders(
        audio_format=headers.get("x-venice-audio-format"),
        inference_time=number("x-venice-inference-time"),
        model_id=headers.get("x-venice-model-id"),
        model_name=headers.get("x-venice-model-name"),
        audio_duration=number("x-venice-audio-duration"),
        audio_subtitle=headers.get("x-venice-audio-subtitle"),
        version=headers.get("x-venice-version"),
    )


async def _read_up_to(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Read until the end of the body or ``limit`` bytes, whichever comes first."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class _AudioBody:
    """Reads an audio body within its size cap and above its minimum pace.

    The pace is checked per window: each ``window`` seconds spent waiting for the network
    must bring ``rate * window`` bytes, else the download fails as stalled; a window that
    brings them ends there and the next one starts. Time spent between reads (storing the
    chunks) does not count: the rule judges the server, not the disk. The clock is real
    time, like aiohttp's own timeouts.
    """

    def __init__(
        self, content: aiohttp.StreamReader, *, cap: int, rate: float | None, window: float
    ) -> None:
        self._content = content
        self._cap = cap
        self._rate = rate
        self._window = window
        self._needed = math.inf if rate is None else rate * window
        self.received = 0
        self._window_start = self._left_at = anyio.current_time()
        self._window_bytes = 0

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (``b""`` at the end).

        Raises:
            ResponseTooLarge: the body went over the cap (one byte past it was read).
            RequestTimeout: the body came slower than the minimum pace.
        """
        n = min(n, self._cap + 1 - self.received)
        if self._rate is None:
            chunk = await self._content.read(n)
        else:
            chunk = await self._paced_read(n)
        self.received += len(chunk)
        if self.received > self._cap:
            raise ResponseTooLarge(
                f"audio is over Limits.max_audio_file_bytes ({self._cap} bytes); nothing was kept",
                endpoint="retrieve",
            )
        return chunk

    async def _paced_read(self, n: int) -> bytes:
        self._window_start += anyio.current_time() - self._left_at
        with anyio.CancelScope(deadline=self._window_start + self._window) as scope:
            chunk = await self._content.read(n)
        if scope.cancelled_caught:
            raise RequestTimeout(
                f"audio download stalled: under {self._rate:g} bytes/s over {self._window:g} s "
                "(Timeouts.min_download_rate, Timeouts.stall_window)",
                endpoint="retrieve",
            )
        self._left_at = anyio.current_time()
        self._window_bytes += len(chunk)
        if self._window_bytes >= self._needed:
            self._window_start, self._window_bytes = self._left_at, 0
        return chunk


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
        headers = {"User-Agent": self.user_agent, "Accept": "application/json, audio/*"}
        if auth and self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _notify(self, endpoint: str, status: int, headers: Mapping[str, str]) -> None:
        if self._observer is not None:
            # What an answer taught (a 429's pause, written to a shared store) is kept even
            # if the caller is being cancelled or its status deadline passes meanwhile.
            with anyio.CancelScope(shield=True):
                await self._observer(endpoint, status, headers)

    def _timeout(self, *, download: bool) -> aiohttp.ClientTimeout:
        t = self._timeouts
        return aiohttp.ClientTimeout(
            total=t.download if download else t.request,
            sock_connect=t.connect,
            sock_read=t.read,
        )

    def _translate(self, endpoint: str, exc: BaseException) -> TransportError:
        """Map an aiohttp/asyncio failure to ours; the most specific class wins."""
        _redact(exc)
        where = f"{endpoint} request to {self._base.host}"
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return RequestTimeout(
                f"{where}: connect timed out", endpoint=endpoint, request_sent=False
            )
        if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError, TimeoutError)):
            return RequestTimeout(f"{where}: no answer in time", endpoint=endpoint)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ConnectError(f"{where}: cannot connect ({exc.os_error})", endpoint=endpoint)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return TruncatedResponse(f"{where}: the body was cut short", endpoint=endpoint)
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            return ConnectionDropped(f"{where}: the connection was dropped", endpoint=endpoint)
        if isinstance(exc, aiohttp.ClientResponseError):
            return MalformedResponse(
                f"{where}: unreadable answer ({exc.message})", endpoint=endpoint
            )
        return TransportError(f"{where}: {type(exc).__name__}", endpoint=endpoint)

    async def _error(self, endpoint: str, response: aiohttp.ClientResponse) -> APIStatusError:
        headers = _headers_of(response)
        if 300 <= response.status < 400:
            return APIStatusError(
                f"unexpected redirect to {headers.get('location', '?')!r}, not followed",
                status_code=response.status,
                headers=support_headers(headers),
                endpoint=endpoint,
            )
        raw = await _read_up_to(response.content, _ERROR_BODY_LIMIT)
        retry_after = parse_retry_after(headers.get("retry-after"))
        return error_from_response(
            response.status, raw, headers, endpoint=endpoint, retry_after=retry_after
        )

    async def _json_body(self, endpoint: str, response: aiohttp.ClientResponse) -> bytes:
        """The whole JSON body, refused past ``Limits.max_json_bytes`` without reading on.

        Raises:
            ResponseTooLarge: the body (announced or received) is over the cap.
        """
        cap = self._limits.max_json_bytes
        length = response.content_length
        if length is None or length <= cap:
            raw = await _read_up_to(response.content, cap + 1)
            if len(raw) <= cap:
                return raw
            length = None
        announced = "" if length is None else f" ({length} bytes announced)"
        raise ResponseTooLarge(
            f"{endpoint} answered JSON over Limits.max_json_bytes ({cap} bytes){announced}; "
            "it was not read",
            endpoint=endpoint,
        )

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        download: bool = False,
        outcome: _Outcome | None = None,
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, dict[str, str]]]:
        """One request: yields a successful response; error statuses and every aiohttp or
        asyncio failure (also while the caller reads the body) become our exceptions."""
        try:
            async with self._client().request(
                method,
                self._base / path,
                json=body,
                params=params,
                headers=self._headers(auth=auth),
                allow_redirects=False,
                timeout=self._timeout(download=download),
            ) as response:
                headers = _headers_of(response)
                if outcome is not None:
                    outcome.status = response.status
                if response.status >= 300:
                    error = await self._error(endpoint, response)
                    await self._notify(endpoint, response.status, headers)
                    raise error
                try:
                    yield response, headers
                except VeniceError:
                    # The server answered; what we did with the body failed (storage, a
                    # body that is not audio, over a cap): the request still counts.
                    await self._notify(endpoint, response.status, headers)
                    raise
        except VeniceError:
            raise  # already ours (some are TimeoutErrors: not to be translated again)
        except (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError) as exc:
            await self._notify(endpoint, 0, {})
            raise self._translate(endpoint, exc) from exc
        await self._notify(endpoint, response.status, headers)

    @staticmethod
    def _json(endpoint: str, status: int, headers: dict[str, str], raw: bytes) -> JsonAnswer:
        try:
            return JsonAnswer(status=status, headers=headers, body=json.loads(raw))
        except ValueError as exc:
            raise MalformedResponse(
                f"{endpoint} answered {len(raw)} bytes that are not JSON", endpoint=endpoint
            ) from exc

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
        with _logged(_Outcome(endpoint, _queue_id_in(body))) as outcome:
            async with self._exchange(
                endpoint,
                method,
                path.lstrip("/"),
                body=body,
                params=params,
                auth=auth,
                outcome=outcome,
            ) as (response, headers):
                raw = await self._json_body(endpoint, response)
            answer = self._json(endpoint, response.status, headers, raw)
            if outcome.queue_id is None and isinstance(answer.body, dict):
                outcome.queue_id = _queue_id_in(answer.body)  # queue: the id just issued
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
        with _logged(_Outcome("retrieve", _queue_id_in(body))) as outcome:
            return await self._retrieve(body, sink, outcome)

    async def _retrieve(
        self, body: Mapping[str, Any], sink: AudioSink, outcome: _Outcome
    ) -> JsonAnswer | AudioResult:
        endpoint = "retrieve"
        limit = self._timeouts.status
        answer: JsonAnswer | None = None
        # The status deadline covers the wait for headers and a JSON body; once audio
        # starts it is lifted, and the download rules (cap, pace, ``download``) apply.
        deadline = math.inf if limit is None else anyio.current_time() + limit
        with anyio.CancelScope(deadline=deadline) as status_scope:
            async with self._exchange(
                endpoint, "POST", "audio/retrieve", body=body, download=True, outcome=outcome
            ) as (response, headers):
                media_type = response.content_type.lower()
                if media_type == "application/json":
                    raw = await self._json_body(endpoint, response)
                    answer = self._json(endpoint, response.status, headers, raw)
                else:
                    status_scope.deadline = math.inf
                    audio = await self._stream_audio(response, headers, media_type, sink)
                    outcome.detail = f"{audio.format} audio, {audio.size} bytes"
                    return audio
        if answer is None:  # only the status deadline ends the scope without an answer
            await self._notify(endpoint, 0, {})
            raise RequestTimeout(
                f"{endpoint} request to {self._base.host}: no status answer within "
                f"{limit} s (Timeouts.status)",
                endpoint=endpoint,
            )
        if isinstance(answer.body, dict):
            outcome.detail = str(answer.body.get("status", ""))
        return answer

    async def _stream_audio(
        self,
        response: aiohttp.ClientResponse,
        headers: dict[str, str],
        media_type: str,
        sink: AudioSink,
    ) -> AudioResult:
        # The media type decides "audio"; the magic bytes decide which container, because
        # labels have been seen wrong (AUDIO_API.md section 10) and octet-stream says nothing.
        declared = format_for_media_type(media_type)
        cap = self._limits.max_audio_file_bytes
        length = response.content_length
        if length is not None and length > cap:
            raise ResponseTooLarge(
                f"audio of {length} bytes is over Limits.max_audio_file_bytes ({cap} bytes); "
                "it was not downloaded",
                endpoint="retrieve",
            )
        body = _AudioBody(
            response.content,
            cap=cap,
            rate=self._timeouts.min_download_rate,
            window=self._timeouts.stall_window,
        )
        head = b""
        while len(head) < 1 << 20:
            needed = sniff_needs(head)
            if len(head) >= needed:
                break
            chunk = await body.read(max(needed - len(head), 16))
            if not chunk:
                break
            head += chunk
        sniffed = sniff_format(head)
        audio_format = sniffed or declared
        if audio_format is None:
            raise MalformedResponse(
                f"retrieve answered {media_type!r} that is neither a status nor audio",
                endpoint="retrieve",
            )
        if declared is not None and sniffed is not None and sniffed != declared:
            log.info("audio labelled %s is %s; trusting the bytes", media_type, sniffed)
        await _store(
            sink.begin(audio_format=audio_format, content_type=media_type, content_length=length)
        )
        size = 0
        try:
            if head:
                await _store(sink.write(head))
                size += len(head)
            while chunk := await body.read(_CHUNK):
                await _store(sink.write(chunk))
                size += len(chunk)
            if length is not None and size != length:
                raise TruncatedResponse(
                    f"audio body has {size} of {length} announced bytes", endpoint="retrieve"
                )
            data, path = await _store(sink.finish(size))
        except BaseException:
            await sink.abort()
            raise
        return AudioResult(
            content_type=media_type,
            format=audio_format,
            size=size,
            data=data,
            path=path,
            venice=_venice_headers(headers),
        )
