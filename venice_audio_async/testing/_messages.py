"""The texts and bodies the fake server answers with (the API's error codes and rate limits).

Kept apart from the server so that the exact wording Venice uses (which tests assert and
clients may match on) lives in one place: error messages per status, a job's failure text,
the Zod-style body of a validation 400, the error-budget lockout message and the x402
"payment required" discovery body.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ._rules import Issue

__all__ = [
    "DEFAULT_SUGGESTED_PROMPT",
    "INVALID_PARAMETERS",
    "MSG_AUTH_FAILED",
    "MSG_CONTENT_POLICY",
    "MSG_INSUFFICIENT",
    "MSG_INVALID_ID",
    "MSG_MEDIA_GONE",
    "MSG_MODEL_NOT_FOUND",
    "MSG_MODEL_OVERLOADED",
    "MSG_RATE_LIMITED",
    "STATUS_MESSAGES",
    "default_message",
    "detailed_error",
    "error_message",
    "job_failure_message",
    "lockout_message",
    "payment_required",
    "seconds_text",
]

#: The ``error`` string of a schema 400.
INVALID_PARAMETERS = "Invalid request parameters"
MSG_AUTH_FAILED = "Authentication failed"
MSG_INVALID_ID = "Request ID is invalid."
MSG_MEDIA_GONE = "Media could not be found. Request may be invalid, expired, or deleted."
MSG_MODEL_NOT_FOUND = "Specified model not found"
MSG_CONTENT_POLICY = "Your prompt violates the content policy of Venice.ai or the model provider"
#: The three 429s a client meets carry no ``code`` (section 8): only their texts tell them
#: apart. A rate limit: ``MSG_RATE_LIMITED``; an overloaded model: ``MSG_MODEL_OVERLOADED``
#: (with ``Retry-After``); the error-budget lockout: :func:`lockout_message`.
MSG_RATE_LIMITED = "Rate limit exceeded"
MSG_MODEL_OVERLOADED = "The model is currently overloaded. Please try again later."
MSG_INSUFFICIENT = (
    "Insufficient USD or Diem balance to complete request. "
    "Visit https://venice.ai/settings/api to add credits."
)
DEFAULT_SUGGESTED_PROMPT = "A calm instrumental piece with soft piano and warm strings."

#: Default error texts per status (the API reference's error codes).
STATUS_MESSAGES: dict[int, str] = {
    400: INVALID_PARAMETERS,
    401: MSG_AUTH_FAILED,
    402: MSG_INSUFFICIENT,
    403: "Unauthorized access",
    404: MSG_MODEL_NOT_FOUND,
    405: "Method not allowed",
    413: "Request body exceeds the maximum allowed size.",
    415: "Invalid request content-type",
    422: MSG_CONTENT_POLICY,
    429: MSG_RATE_LIMITED,
    500: "An unknown error occurred",
    502: "Bad gateway",
    503: "The model is at capacity. Please try again later.",
    504: "The request took too long to complete. Please try again later.",
}

# Texts of a *job's* failure as reported by retrieve.
_JOB_FAILURE_MESSAGES: dict[int, str] = {
    400: "Invalid request parameters",
    422: MSG_CONTENT_POLICY,
    500: "Inference processing failed",
    503: "The model is at capacity. Please try again later.",
}


def seconds_text(seconds: float) -> str:
    """``30.0`` -> ``"30"``, ``0.25`` -> ``"0.25"`` (header values in virtual seconds)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


def default_message(status: int, endpoint: str) -> str:
    """The documented ``error`` text for ``status`` answered by ``endpoint``."""
    if status == 404 and endpoint in ("retrieve", "complete"):
        return MSG_MEDIA_GONE
    return STATUS_MESSAGES.get(status, "An unknown error occurred")


def job_failure_message(status: int) -> str:
    """The ``error`` text ``retrieve`` reports for a job that failed with ``status``."""
    return _JOB_FAILURE_MESSAGES.get(status) or default_message(status, "retrieve")


def error_message(issues: Sequence[Issue]) -> str:
    """The ``error`` string of a 400 for ``issues``.

    A single per-model problem is reported with its own message (as Venice does for
    "This model does not support duration_seconds"); anything else is "Invalid request
    parameters".
    """
    if len(issues) == 1 and issues[0].code == "custom":
        return issues[0].message
    return INVALID_PARAMETERS


def detailed_error(issues: Sequence[Issue], *, error: str | None = None) -> dict[str, Any]:
    """Build a Zod-style DetailedError body: ``error``, a ``details`` tree and ``issues``.

    ``details`` nests one node per path element, each with an ``_errors`` list; body-level
    problems land in the root ``_errors``. A voice problem also lists
    ``details.supported_voices``.
    """
    details: dict[str, Any] = {"_errors": []}
    for issue in issues:
        node = details
        for part in issue.path:
            node = node.setdefault(part, {"_errors": []})
        node["_errors"].append(issue.message)
        params = issue.extra.get("params")
        if isinstance(params, Mapping) and "supported_voices" in params:
            details["supported_voices"] = list(params["supported_voices"])
    return {
        "error": error if error is not None else error_message(issues),
        "details": details,
        "issues": [issue.to_json() for issue in issues],
    }


def lockout_message(failures: int, window: float) -> str:
    """The error-budget lockout text ([DOCS] wording, with the configured numbers)."""
    return (
        f"Too many failed attempts (> {failures}) resulting in a non-success status code. "
        f"Please wait {seconds_text(window)}s and try again."
    )


def payment_required(url: str) -> tuple[dict[str, Any], str]:
    """The x402 discovery answer to a request without credentials (section 9, variant a).

    Returns the JSON body and the value of the ``PAYMENT-REQUIRED`` header (base64 JSON of
    the payment requirements).
    """
    requirement = {
        "scheme": "exact",
        "network": "eip155:8453",
        "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "amount": "100000",
        "payTo": "0x0000000000000000000000000000000000000000",
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    body = {
        "x402Version": 2,
        "error": "Payment required: send an API key or sign in with an x402 wallet",
        "resource": {
            "url": url,
            "description": "Venice API",
            "mimeType": "application/json",
        },
        "accepts": [requirement],
        "extensions": {
            "sign-in-with-x": {
                "domain": "api.venice.ai",
                "nonce": uuid.uuid4().hex,
                "chains": ["eip155:8453", "solana:mainnet"],
            }
        },
        "authOptions": {
            "apiKey": {
                "header": "Authorization: Bearer YOUR_API_KEY",
                "getKey": "https://venice.ai/settings/api",
                "docs": "https://docs.venice.ai/api-reference",
            },
            "x402Wallet": {
                "header": "SIGN-IN-WITH-X",
                "legacyHeader": "X-Sign-In-With-X",
                "topUp": "POST /api/v1/x402/top-up",
                "docs": "https://docs.venice.ai/api-reference/endpoint/x402/top-up",
            },
        },
    }
    header = base64.b64encode(json.dumps({"x402Version": 2, "accepts": [requirement]}).encode())
    return body, header.decode()
