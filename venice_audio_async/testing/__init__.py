"""A faithful fake of Venice's asynchronous audio API, for tests and local development.

:class:`FakeServer` is a real aiohttp server (so a client talks to it over HTTP exactly as it
would to ``https://api.venice.ai/api/v1``) that serves the bundled model catalogue, validates
requests strictly and per model, runs scripted job timelines in scaled virtual time, streams
valid audio files, and can inject faults (error statuses, delays, hangs, slow drips, dropped
connections, truncated downloads, wrong content types), overloaded models, rate limits, an
outside client spending the same limits, an error budget and a balance.

Run it standalone with ``python -m venice_audio_async.testing --port 8000``.

The clocks are here too: a session reads time through a :class:`Clock`
(:class:`SystemClock` by default); :class:`ScaledClock` runs it faster (pair it with the
fake's ``time_scale``) and :class:`ManualClock` only moves when a test advances it.
"""

from venice_audio_async._core.clock import Clock, ManualClock, ScaledClock, SystemClock

from ._audio import audio_bytes, sniff_audio_format
from ._catalogue import load_default_catalogue
from ._mix import JobMix, ModelTiming
from ._pricing import compute_quote
from ._rules import check_queue_body, check_quote_body
from ._server import FakeServer
from ._types import ENDPOINTS, FakeJob, Fault, JobScript, RecordedRequest

__all__ = [
    "Clock",
    "ENDPOINTS",
    "FakeJob",
    "FakeServer",
    "Fault",
    "JobMix",
    "JobScript",
    "ManualClock",
    "ModelTiming",
    "RecordedRequest",
    "ScaledClock",
    "SystemClock",
    "audio_bytes",
    "check_queue_body",
    "check_quote_body",
    "compute_quote",
    "load_default_catalogue",
    "sniff_audio_format",
]
