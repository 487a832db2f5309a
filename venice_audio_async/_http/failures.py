"""What went wrong with a request, in this library's terms.

An error status becomes the most specific :class:`~venice_audio_async.APIStatusError`
(:func:`status_error`); an aiohttp or asyncio failure becomes the most specific
:class:`~venice_audio_async.TransportError` (:func:`transport_error`), after our
``Authorization`` header is blanked in the aiohttp exceptions it chains to.

With ``_http.transport`` this is one of the two modules that import aiohttp: telling its
exception classes apart and rebuilding its ``RequestInfo`` need it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .._core.errors import (
    APIStatusError,
    ConnectError,
    ConnectionDropped,
    MalformedResponse,
    RequestTimeout,
    TransportError,
    TruncatedResponse,
    error_from_response,
    support_headers,
)
from .body import BodyReader, read_up_to
from .headers import parse_retry_after

__all__ = ["status_error", "transport_error"]

_ERROR_BODY_LIMIT = 64 * 1024
_REDACTED = "[redacted]"


async def status_error(
    endpoint: str, status: int, headers: Mapping[str, str], content: BodyReader
) -> APIStatusError:
    """The error for an answer with a status of 300 or more (``headers`` lower-cased).

    A redirect is reported, never followed; otherwise up to 64 KiB of the body are read for
    the API's message.
    """
    if 300 <= status < 400:
        return APIStatusError(
            f"unexpected redirect to {headers.get('location', '?')!r}, not followed",
            status_code=status,
            headers=support_headers(headers),
            endpoint=endpoint,
        )
    raw = await read_up_to(content, _ERROR_BODY_LIMIT)
    retry_after = parse_retry_after(headers.get("retry-after"))
    return error_from_response(status, raw, headers, endpoint=endpoint, retry_after=retry_after)


def transport_error(endpoint: str, host: str | None, exc: BaseException) -> TransportError:
    """Map an aiohttp/asyncio failure to ours; the most specific class wins.

    ``exc`` (and what it chains to) is redacted first, as ours is raised ``from`` it.
    """
    _redact(exc)
    where = f"{endpoint} request to {host}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return RequestTimeout(f"{where}: connect timed out", endpoint=endpoint, request_sent=False)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return RequestTimeout(f"{where}: no answer in time", endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"{where}: cannot connect ({exc.os_error})", endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TruncatedResponse(f"{where}: the body was cut short", endpoint=endpoint)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return ConnectionDropped(f"{where}: the connection was dropped", endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientResponseError):
        return MalformedResponse(f"{where}: unreadable answer ({exc.message})", endpoint=endpoint)
    return TransportError(f"{where}: {type(exc).__name__}", endpoint=endpoint)


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
