"""The fake server's public value types: job timelines, faults, request records, job state.

:class:`JobScript` and :class:`Fault` are what a test hands the server (how a job behaves,
how a request misbehaves); :class:`RecordedRequest` and :class:`FakeJob` are what it reads
back (every request received, every job's server-side state). All times are virtual seconds
of the server's clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs

from ._audio import AUDIO_FORMATS, DEFAULT_AUDIO_SIZE, iter_audio, min_audio_size
from ._messages import seconds_text
from ._tones import iter_tone, tone_size

__all__ = [
    "AUDIO_ENDPOINTS",
    "ENDPOINTS",
    "MIN_AUDIO_SIZE",
    "Endpoint",
    "FakeJob",
    "Fault",
    "FaultKind",
    "JobScript",
    "RecordedRequest",
]

Endpoint = Literal["models", "quote", "queue", "retrieve", "complete", "key_rate_limits"]

#: The endpoint names used by :meth:`FakeServer.inject`, ``rate_limits`` and the request log
#: (``key_rate_limits`` is ``GET /api_keys/rate_limits``).
ENDPOINTS: tuple[Endpoint, ...] = (
    "models",
    "quote",
    "queue",
    "retrieve",
    "complete",
    "key_rate_limits",
)

#: The endpoints a pooled rate limit counts together (Venice's "Audio: 60 requests/min").
AUDIO_ENDPOINTS: frozenset[Endpoint] = frozenset({"quote", "queue", "retrieve", "complete"})

#: ``audio_size`` must be at least this, so that any container can be built.
MIN_AUDIO_SIZE = max(min_audio_size(fmt, id3=True) for fmt in AUDIO_FORMATS)


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


FaultKind = Literal["status", "delay", "drop", "hang", "drip", "truncate", "content_type"]


@attrs.frozen
class Fault:
    """A misbehaviour to inject with :meth:`FakeServer.inject`; build one with a classmethod.

    ``status``, ``delay``, ``drop`` and ``hang`` act when the request arrives, before normal
    handling; ``drip`` and ``drop(mid_body=True)`` alter a JSON answer (any answer but
    ``retrieve``'s audio); ``truncate`` and ``content_type`` alter an audio answer of
    ``retrieve``. A fault is used up only by an answer it can alter.
    """

    kind: FaultKind
    http_status: int = 0
    body: bytes | None = None
    media_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None
    seconds: float = 0.0
    mid_body: bool = False
    forever: bool = False

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
        ``x-ratelimit-reset-requests`` (virtual epoch ms, ``retry_after`` or 1 s ahead), plus
        ``x-ratelimit-limit-requests`` if the endpoint has a ``rate_limits`` entry, unless the
        server was made with ``state_limits=False``. Headers given in ``headers`` replace
        these defaults (matched case-insensitively).

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
    def drop(cls, *, mid_body: bool = False) -> Fault:
        """Read the request, then close the connection without answering.

        On ``queue`` the request is handled first (the job is created and billed) and only the
        answer is lost. With ``mid_body``, the request is handled and its JSON answer is cut:
        the status, the headers and a full ``Content-Length`` are sent, then half the body,
        then the connection closes (for ``retrieve``'s audio answer use :meth:`truncate`).
        """
        return cls(kind="drop", mid_body=mid_body)

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        """Read the request and never answer: hold the connection until the client gives up.

        The request is not handled (a ``queue`` creates no job). With ``seconds`` (virtual),
        the server closes the connection, still without an answer, after that long; without,
        it holds it until the server closes.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"hang must be >= 0 seconds, got {seconds!r}")
        return cls(kind="hang", seconds=seconds or 0.0, forever=seconds is None)

    @classmethod
    def drip(cls, seconds: float) -> Fault:
        """Handle the request, send the status and headers at once, then the JSON body one
        byte at a time spread over ``seconds`` (virtual): a slow or congested network.

        Used up by the next JSON answer of the endpoint (a ``retrieve`` that answers audio
        leaves it for a later request).

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"drip must be >= 0 seconds, got {seconds!r}")
        return cls(kind="drip", seconds=seconds)

    @classmethod
    def truncate(cls) -> Fault:
        """``retrieve`` audio: send the full ``Content-Length``, half the body, then close."""
        return cls(kind="truncate")

    @classmethod
    def content_type(cls, value: str) -> Fault:
        """``retrieve`` audio: send the real bytes labelled with this ``Content-Type``."""
        return cls(kind="content_type", media_type=value)

    @property
    def stage(self) -> Literal["request", "answer", "audio"]:
        """``"audio"`` for faults that alter an audio answer, ``"answer"`` for those that
        alter a JSON answer, else ``"request"``."""
        if self.kind in ("truncate", "content_type"):
            return "audio"
        if self.kind == "drip" or (self.kind == "drop" and self.mid_body):
            return "answer"
        return "request"

    @property
    def label(self) -> str:
        """Short description recorded in :attr:`RecordedRequest.fault`."""
        if self.kind == "status":
            return f"status:{self.http_status}"
        if self.kind in ("delay", "drip"):
            return f"{self.kind}:{seconds_text(self.seconds)}"
        if self.kind == "hang":
            return "hang" if self.forever else f"hang:{seconds_text(self.seconds)}"
        if self.kind == "drop" and self.mid_body:
            return "drop:mid_body"
        if self.kind == "content_type":
            return f"content_type:{self.media_type}"
        return self.kind


@attrs.frozen
class RecordedRequest:
    """One request the server received, and how it was answered.

    Attributes:
        endpoint: one of :data:`ENDPOINTS`, or ``unknown``.
        method: HTTP method.
        path: URL path.
        query: query parameters.
        headers: a case-insensitive copy of the request headers.
        body: the parsed JSON body, or ``None`` (no body or not JSON).
        raw_body: the body bytes as received (empty when over the size limit).
        time: virtual monotonic time of arrival.
        status: the status answered, or 0 when no answer was sent (dropped).
        peer: the client's ``(host, port)``; distinct ports mean distinct connections.
        fault: what was injected or enforced: a :attr:`Fault.label`, ``"rate_limit"`` (the
            endpoint's own limit), ``"pooled_rate_limit"``, ``"overloaded"`` (an overloaded
            model's 429) or ``"error_budget"`` (joined with ``+`` if several), else ``None``.
        retry_after: the ``Retry-After`` the answer carried (seconds), else ``None``.
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
    retry_after: float | None = None


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
        tone_seconds: the job's audio is a playable WAV tone this long
            (``FakeServer(audio="tones")``); ``None``: the strict byte-level file.
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
    tone_seconds: float | None = None

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
        if self.tone_seconds is not None:
            return tone_size(self.tone_seconds)
        return self.script.audio_size if self.script.audio_size is not None else DEFAULT_AUDIO_SIZE

    def audio_chunks(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """The bytes ``retrieve`` sends for this job once it is done, in chunks."""
        if self.tone_seconds is not None:
            return iter_tone(self.tone_seconds, seed=self.queue_id, chunk_size=chunk_size)
        return iter_audio(
            self.audio_format,
            self.audio_size,
            seed=self.queue_id,
            id3=self.script.id3,
            chunk_size=chunk_size,
        )

    def done(self, now: float) -> bool:
        """Whether the job is over at virtual time ``now``."""
        return now >= self.finishes_at
