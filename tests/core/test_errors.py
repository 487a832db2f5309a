"""Status codes and bodies map to the right exception class."""

from __future__ import annotations

import json

import pytest

import venice_audio_async as v
from venice_audio_async._core.errors import error_from_response
from venice_audio_async._http.headers import parse_retry_after


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


# --------------------------------------------------------------------------- pickling

_KEY = "sk-pickle-secret-0123456789"
_REQUEST = v.QueueRequest(model="elevenlabs-music", prompt="a calm piano piece")
_JOB = v.Job(model="elevenlabs-music", queue_id="q-1", request=_REQUEST)

#: A sample value for each constructor parameter an error class takes. A new class with a
#: parameter not listed here fails the test below until a sample is added.
_SAMPLES: dict[str, object] = {
    "message": "something failed",
    "problems": (v.FieldProblem("prompt", "too short"),),
    "model": "elevenlabs-music",
    "estimate_usd": 1.25,
    "spent_usd": 3.5,
    "limit_usd": 4.0,
    "endpoint": "queue",
    "request_sent": False,
    "request": _REQUEST,
    "cause": v.ConnectionDropped("dropped", endpoint="queue", request_sent=True),
    "jobs": [_JOB, None],
    "errors": {1: v.ConnectError("refused", endpoint="queue")},
    "path": "/tmp/jobs.sqlite3",
    "holder_pid": 4242,
    "job": _JOB,
    "waited": 12.5,
    "last_error": v.RequestTimeout("no status in 10 s", endpoint="retrieve"),
    "status_code": 418,
    "body": {"error": "no", "details": {"prompt": {"_errors": ["too short"]}}},
    # What the transport hands over: the Authorization header is dropped on the way.
    "headers": error_from_response(
        500, b"{}", {"Authorization": f"Bearer {_KEY}", "x-venice-version": "7"}
    ).headers,
    "retry_after": 2.5,
}


def _error_classes() -> list[type[v.VeniceError]]:
    import venice_audio_async.testing  # noqa: F401  (its errors, if it defines any)

    found: set[type[v.VeniceError]] = set()
    pending: list[type[v.VeniceError]] = [v.VeniceError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


def _make(cls: type[v.VeniceError]) -> v.VeniceError:
    import inspect

    own = [k for k in cls.__mro__ if issubclass(k, v.VeniceError) and "__init__" in vars(k)]
    if not own:  # the plain Exception(message) signature
        return cls("something failed")
    arguments: list[object] = []
    keywords: dict[str, object] = {}
    for name, parameter in inspect.signature(cls).parameters.items():
        assert name in _SAMPLES, f"add a sample value for {cls.__name__}({name}=...)"
        if parameter.kind is parameter.KEYWORD_ONLY:
            keywords[name] = _SAMPLES[name]
        else:
            arguments.append(_SAMPLES[name])
    return cls(*arguments, **keywords)


def _same(a: object, b: object) -> bool:
    """Equal values; exceptions (which compare by identity) by class, args and fields."""
    if isinstance(a, BaseException) and isinstance(b, BaseException):
        return type(a) is type(b) and a.args == b.args and _same(vars(a), vars(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_pickles_with_its_fields(cls: type[v.VeniceError]) -> None:
    """Every error of the tree survives pickle (process pools, task queues): its class,
    message and fields come back, and the API key is nowhere in the bytes."""
    import pickle

    error = _make(cls)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        data = pickle.dumps(error, protocol=protocol)
        assert _KEY.encode() not in data
        copy = pickle.loads(data)
        assert type(copy) is cls
        assert str(copy) == str(error)
        assert _same(copy, error)


def test_the_pickle_test_covers_the_whole_tree() -> None:
    """The walk finds the classes named in the issue (so a new class is found the same way)."""
    names = {cls.__name__ for cls in _error_classes()}
    assert {"RateLimitError", "QueueOutcomeUnknown", "BatchSubmitError", "VeniceError"} <= names
    assert len(names) >= 33


def test_a_pickled_error_keeps_working_properties() -> None:
    """Properties computed from the fields work on the copy (details, retry_after, version)."""
    import pickle

    error = error_from_response(
        429,
        b'{"error": "slow down"}',
        {"x-venice-version": "9", "Authorization": f"Bearer {_KEY}"},
        endpoint="queue",
        retry_after=3.0,
    )
    data = pickle.dumps(error)
    assert _KEY.encode() not in data
    copy = pickle.loads(data)
    assert isinstance(copy, v.RateLimitError)
    assert (copy.retry_after, copy.version, copy.status_code) == (3.0, "9", 429)
    assert copy.message == "slow down"
