"""The package logger, what each request's log record carries, and ``VENICE_AUDIO_LOG``.

Every record goes through the ``venice_audio_async`` logger, with a readable message and
structured fields in ``extra`` (``record.endpoint``, ``record.status`` ...), so a handler can
format them or ship them as JSON:

* DEBUG, one per request outcome (``_http/log.py``): ``endpoint``, ``status`` (0: no HTTP
  answer), ``queue_id`` (when the request or its answer names one), ``attempt`` (1 for the
  first try; ``None`` when the caller does not count), ``wait`` (seconds the request waited
  for its rate-limit token, when known), ``elapsed`` (seconds on the wire) and ``error``
  (the exception class, or ``None``);
* INFO / WARNING, every pause of the request budget (a 429's ``Retry-After``, the
  failed-request lockout, the failure window) and every retry where it is decided.

The API key is never in a record: the transport logs no header and no body.

``VENICE_AUDIO_LOG=debug`` (or ``info``), like openai-python's ``OPENAI_LOG``, turns the
logger on without any code: read once, when the first client or session is created, it sets
the logger's level (unless you set one) and, if no handler is configured anywhere (yours, or
the root logger's), attaches one that writes to stderr.
"""

from __future__ import annotations

import contextvars
import logging
import os

import attrs

__all__ = [
    "RequestAttempt",
    "attempt_context",
    "configure_from_environment",
    "current_attempt",
    "log",
]

log = logging.getLogger("venice_audio_async")

#: The environment switch: ``debug`` or ``info``.
ENV_VAR = "VENICE_AUDIO_LOG"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_configured = False


@attrs.frozen
class RequestAttempt:
    """Which try of a request this is, and how long it waited for its token (seconds)."""

    attempt: int
    wait: float | None = None


_attempt: contextvars.ContextVar[RequestAttempt | None] = contextvars.ContextVar(
    "venice_audio_attempt", default=None
)


#: The frozen records of the first tries without a token wait (every poll declares one).
_PLAIN = [RequestAttempt(n) for n in range(8)]


def current_attempt() -> RequestAttempt | None:
    """The attempt the running task declared for its next request, if any."""
    return _attempt.get()


class attempt_context:
    """Declare, for the requests sent inside, which attempt they are (for their log record).

    A class rather than a generator: it wraps every poll, and costs a third as much."""

    __slots__ = ("_attempt", "_token")

    def __init__(self, attempt: int, *, wait: float | None = None) -> None:
        first = wait is None and 0 < attempt < len(_PLAIN)
        self._attempt = _PLAIN[attempt] if first else RequestAttempt(attempt, wait)

    def __enter__(self) -> None:
        self._token = _attempt.set(self._attempt)

    def __exit__(self, *exc_info: object) -> None:
        _attempt.reset(self._token)


def configure_from_environment() -> None:
    """Apply ``VENICE_AUDIO_LOG`` once; later calls (and unknown values) do nothing."""
    global _configured
    if _configured:
        return
    _configured = True
    level = _LEVELS.get(os.environ.get(ENV_VAR, "").strip().lower())
    if level is None:
        return
    if log.level == logging.NOTSET:
        log.setLevel(level)
    if not log.hasHandlers():  # the user configured nothing: make the switch visible
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        log.addHandler(handler)
