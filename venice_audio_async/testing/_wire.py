"""HTTP plumbing shared by the fake server's pipeline and endpoints.

The per-request scratch state (:class:`Context`), JSON answers, strict JSON parsing the way
Venice's JavaScript server parses, and reading a body without holding more than the size
limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
from aiohttp import web

__all__ = [
    "MAX_BODY_BYTES",
    "Context",
    "drop",
    "json_response",
    "loads_lenient",
    "loads_strict",
    "queue_id_of",
    "read_body",
]

#: Largest accepted request body ([SKILL]: 35 MB).
MAX_BODY_BYTES = 35 * 1024 * 1024


@attrs.define(eq=False)
class Context:
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

    def json(self, status: int, payload: Any) -> web.Response:
        """A JSON answer carrying the headers gathered so far."""
        return json_response(status, payload, self.headers)


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A compact UTF-8 JSON answer."""
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def drop(ctx: Context) -> web.Response:
    """Close the connection; aiohttp's attempt to answer then fails quietly."""
    ctx.dropped = True
    transport = ctx.request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=204)


async def read_body(request: web.Request) -> tuple[bytes, bool]:
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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(raw: bytes) -> Any:
    """Parse like ``JSON.parse``: UTF-8 only, no ``NaN``/``Infinity``.

    Raises:
        ValueError: the body is not valid JSON.
    """
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def loads_lenient(raw: bytes) -> Any:
    """The body as JSON for the request log, or ``None``."""
    if not raw:
        return None
    try:
        return loads_strict(raw)
    except ValueError:
        return None


def queue_id_of(body: Any) -> str | None:
    """The ``queue_id`` a body names, if any."""
    if isinstance(body, dict) and isinstance(body.get("queue_id"), str):
        return str(body["queue_id"])
    return None
