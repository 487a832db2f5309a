"""Status codes and bodies map to the right exception class."""

from __future__ import annotations

import json

import pytest

import venice_audio_async as v
from venice_audio_async._errors import error_from_response
from venice_audio_async._retry import parse_retry_after


def _body(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, v.BadRequestError),
        (401, v.AuthenticationError),
        (402, v.PaymentRequiredError),
        (403, v.PermissionDeniedError),
        (404, v.NotFoundError),
        (413, v.PayloadTooLargeError),
        (422, v.ContentPolicyError),
        (429, v.RateLimitError),
        (500, v.InferenceFailedError),
        (502, v.ServerError),
        (503, v.ServiceUnavailableError),
        (504, v.ServerError),
        (418, v.APIStatusError),
    ],
)
@pytest.mark.parametrize(
    "raw",
    [
        _body({"error": "something went wrong"}),
        _body({"error": "Invalid request parameters", "details": "a plain string"}),
        b"<html><body>Bad gateway</body></html>",
        b"",
    ],
    ids=["json", "string-details", "html", "empty"],
)
def test_status_maps_to_class(status: int, cls: type[v.APIStatusError], raw: bytes) -> None:
    """Every status gives its class whatever the body looks like."""
    error = error_from_response(status, raw, {"X-Venice-Version": "20261101"}, endpoint="queue")
    assert type(error) is cls
    assert isinstance(error, v.VeniceError)
    assert error.status_code == status
    assert error.message
    assert error.version == "20261101"
    assert str(status) in str(error)


def test_bad_request_exposes_details_and_issues() -> None:
    """A Zod-style 400 exposes its details tree and issues list."""
    body = {
        "error": "Invalid request parameters",
        "details": {"_errors": [], "prompt": {"_errors": ["Required"]}},
        "issues": [{"code": "invalid_type", "path": ["prompt"], "message": "Required"}],
    }
    error = error_from_response(400, _body(body), {})
    assert isinstance(error, v.BadRequestError)
    assert error.details["prompt"]["_errors"] == ["Required"]
    assert error.issues[0]["path"] == ["prompt"]
    assert error.message == "Invalid request parameters"


def test_string_details_is_kept_as_string() -> None:
    """A 400 whose details is a string keeps it and has no issues."""
    error = error_from_response(400, _body({"error": "x", "details": "bad speed"}), {})
    assert isinstance(error, v.BadRequestError)
    assert error.details == "bad speed"
    assert error.issues == []


def test_html_body_is_kept_as_text() -> None:
    """A non-JSON body becomes the message and the body text."""
    error = error_from_response(502, b"<html>Bad gateway</html>", {})
    assert isinstance(error, v.ServerError)
    assert error.body == "<html>Bad gateway</html>"
    assert "Bad gateway" in error.message


def test_invalid_queue_id_is_specific() -> None:
    """400 "Request ID is invalid." is an InvalidQueueIdError (a BadRequestError)."""
    error = error_from_response(400, _body({"error": "Request ID is invalid."}), {})
    assert isinstance(error, v.InvalidQueueIdError)
    assert isinstance(error, v.BadRequestError)


def test_media_gone_is_specific() -> None:
    """404 with the media message is a MediaNotFoundError; a model 404 is not."""
    gone = error_from_response(
        404,
        _body({"error": "Media could not be found. Request may be invalid, expired, or deleted."}),
        {},
    )
    assert isinstance(gone, v.MediaNotFoundError)
    model = error_from_response(404, _body({"error": "Specified model not found"}), {})
    assert type(model) is v.NotFoundError


def test_content_policy_carries_suggested_prompt() -> None:
    """422 exposes suggested_prompt when the server offers one."""
    body = {"error": "Your prompt violates the content policy", "suggested_prompt": "calm rain"}
    error = error_from_response(422, _body(body), {})
    assert isinstance(error, v.ContentPolicyError)
    assert error.suggested_prompt == "calm rain"
    assert error_from_response(422, b"{}", {}).suggested_prompt is None  # type: ignore[attr-defined]


def test_rate_limit_carries_retry_after() -> None:
    """A 429 carries the Retry-After seconds the transport read from its headers."""
    error = error_from_response(
        429, _body({"error": "Rate limit exceeded"}), {"Retry-After": "7"}, retry_after=7.0
    )
    assert isinstance(error, v.RateLimitError)
    assert error.retry_after == 7.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (" 1.5 ", 1.5), ("-1", None), ("soon", None), (None, None), ("nan", None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After parsing accepts seconds and refuses nonsense."""
    assert parse_retry_after(value) == expected


def test_errors_keep_only_support_headers() -> None:
    """Headers kept on an error never include Authorization or cookies."""
    error = error_from_response(
        500,
        b"{}",
        {"Authorization": "Bearer secret", "Set-Cookie": "a=b", "x-venice-version": "1"},
    )
    assert dict(error.headers) == {"x-venice-version": "1"}


def test_timeout_is_a_builtin_timeout() -> None:
    """RequestTimeout and JobDeadlineExceeded are TimeoutErrors; validation is a ValueError."""
    assert issubclass(v.RequestTimeout, TimeoutError)
    assert issubclass(v.JobDeadlineExceeded, TimeoutError)
    assert issubclass(v.RequestValidationError, ValueError)
    assert issubclass(v.ConnectError, v.TransportError)
    assert not v.ConnectError("x").request_sent


def test_validation_error_lists_every_problem() -> None:
    """The validation error's message names every field."""
    problems = (v.FieldProblem("prompt", "too short"), v.FieldProblem("speed", "too fast"))
    error = v.RequestValidationError(problems, model="m")
    assert "prompt: too short" in str(error)
    assert "speed: too fast" in str(error)
    assert error.problems == problems


def test_queue_outcome_unknown_carries_request() -> None:
    """QueueOutcomeUnknown keeps the request and says it was not retried."""
    request = v.QueueRequest(model="elevenlabs-music", prompt="a calm piano piece")
    cause = v.ConnectionDropped("dropped", endpoint="queue")
    error = v.QueueOutcomeUnknown(request, cause)
    assert error.request is request
    assert "not retried" in str(error)
