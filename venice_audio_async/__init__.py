"""An asyncio-native client for Venice.ai's asynchronous audio API.

Music, sound effects and queued voice: submit many generations, let one scheduler poll them
within the rate limits, and receive each result as it finishes.
"""

# No ``from __future__ import annotations`` here: it would add ``annotations`` to the
# package's public names (tests/test_exports.py compares them with __all__).

from ._client import VeniceClient
from ._core.config import (
    Limits,
    RateLimit,
    RateLimits,
    RetryPolicy,
    Timeouts,
)
from ._core.errors import (
    APIStatusError,
    AsyncioRequiredError,
    AudioStorageError,
    AuthenticationError,
    BadRequestError,
    BatchSubmitError,
    ConnectError,
    ConnectionDropped,
    ContentPolicyError,
    InferenceFailedError,
    InvalidQueueIdError,
    JobDeadlineExceeded,
    JobUnreachable,
    JournalError,
    MalformedResponse,
    MediaNotFoundError,
    MissingAPIKeyError,
    NotFoundError,
    OutcomeAlreadyTaken,
    PayloadTooLargeError,
    PaymentRequiredError,
    PermissionDeniedError,
    QueueDeadlineExceeded,
    QueueOutcomeUnknown,
    RateLimitError,
    RequestTimeout,
    RequestValidationError,
    ResponseTooLarge,
    ServerError,
    ServiceUnavailableError,
    SessionStateError,
    SpendLimitExceeded,
    TransportError,
    TruncatedResponse,
    VeniceError,
)
from ._core.models import (
    AudioResult,
    FieldProblem,
    Job,
    QueueOptions,
    QueueRequest,
)
from ._core.outcomes import BatchOutcome, Failed, Outcome, Refused, Succeeded, Unreachable
from ._core.version import __version__
from ._polling.estimator import PollingBounds
from ._session.session import AsyncSession
from ._session.statistics import SessionStatistics
from ._session.status import JobStatus
from ._sync import VeniceAudio

__all__ = [
    "APIStatusError",
    "AsyncSession",
    "AsyncioRequiredError",
    "AudioResult",
    "AudioStorageError",
    "AuthenticationError",
    "BadRequestError",
    "BatchOutcome",
    "BatchSubmitError",
    "ConnectError",
    "ConnectionDropped",
    "ContentPolicyError",
    "Failed",
    "FieldProblem",
    "InferenceFailedError",
    "InvalidQueueIdError",
    "Job",
    "JobDeadlineExceeded",
    "JobStatus",
    "JobUnreachable",
    "JournalError",
    "Limits",
    "MalformedResponse",
    "MediaNotFoundError",
    "MissingAPIKeyError",
    "NotFoundError",
    "Outcome",
    "OutcomeAlreadyTaken",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "PollingBounds",
    "QueueDeadlineExceeded",
    "QueueOptions",
    "QueueOutcomeUnknown",
    "QueueRequest",
    "RateLimit",
    "RateLimitError",
    "RateLimits",
    "Refused",
    "RequestTimeout",
    "RequestValidationError",
    "ResponseTooLarge",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "SessionStateError",
    "SessionStatistics",
    "SpendLimitExceeded",
    "Succeeded",
    "Timeouts",
    "TransportError",
    "TruncatedResponse",
    "Unreachable",
    "VeniceAudio",
    "VeniceClient",
    "VeniceError",
    "__version__",
]
