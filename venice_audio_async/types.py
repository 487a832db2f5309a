"""The types a session hands you or takes, beyond the session's own: the model catalogue
and its pricing, the API's wire objects (what ``VeniceClient`` sends and answers), result
streams, audio sinks for ``destination=``, and the constants and literal types of
``JobStatus`` and the session's options.

Everything a session's user needs every day is in :mod:`venice_audio_async`; these are
for annotations, custom sinks and the low-level client (as ``openai.types`` is)."""

# No ``from __future__ import annotations``: it would add ``annotations`` to the module's
# public names (tests/test_exports.py compares them with __all__).

from ._core.audio import AudioSink, FileSink, MemorySink
from ._core.config import DEFAULT_BASE_URL
from ._core.models import (
    ApiKeyRateLimits,
    AudioFormat,
    AudioModel,
    CompleteRequest,
    CompleteResult,
    DurationsPricing,
    DurationTier,
    GenerationPricing,
    ModelRateLimits,
    ModelSpec,
    PerSecondPricing,
    PerThousandCharactersPricing,
    Pricing,
    Processing,
    QuoteRequest,
    QuoteResult,
    RetrieveRequest,
    UnknownPricing,
    VeniceHeaders,
)
from ._session.batch_flow import BatchResults, FollowedResults
from ._session.options import SessionOptions
from ._session.results import ResultStream
from ._session.status import PRIOR_RUN_SECONDS, EstimateSource, JobPhase

__all__ = [
    "ApiKeyRateLimits",
    "AudioFormat",
    "AudioModel",
    "AudioSink",
    "BatchResults",
    "CompleteRequest",
    "CompleteResult",
    "DEFAULT_BASE_URL",
    "DurationTier",
    "DurationsPricing",
    "EstimateSource",
    "FileSink",
    "FollowedResults",
    "GenerationPricing",
    "JobPhase",
    "MemorySink",
    "ModelRateLimits",
    "ModelSpec",
    "PRIOR_RUN_SECONDS",
    "PerSecondPricing",
    "PerThousandCharactersPricing",
    "Pricing",
    "Processing",
    "QuoteRequest",
    "QuoteResult",
    "ResultStream",
    "RetrieveRequest",
    "SessionOptions",
    "UnknownPricing",
    "VeniceHeaders",
]
