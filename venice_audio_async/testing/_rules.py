"""Server-side validation of audio request bodies, as the fake server applies it.

This module is deliberately independent of the client: it works on raw JSON values (dicts,
lists, str, int, float, bool, None) and on raw catalogue rows, and it re-states the rules from
the API reference (the quote, queue, retrieve and complete requests) rather than importing the
client's model. A property test can therefore compare the client's local verdict with the
server's.

Two layers, reported together (a request with several problems gets all of them at once):

1. **Schema** (model independent, the OpenAPI request schemas): strict objects (unknown keys
   are an ``unrecognized_keys`` issue), required fields, JSON types, ``prompt`` min length 1,
   ``duration_seconds`` an integer > 0 or a digit-only string, ``character_count`` an integer
   > 0, ``speed`` a number in 0.25..4. Issues and messages follow Zod's conventions, which
   Venice's error bodies use.
2. **Per model** (the catalogue row's ``model_spec``): prompt/lyrics lengths, optional fields
   the model does not support, voices, speed range, duration metadata, and the MiniMax
   specific lyric rules. A field that already failed the schema is not checked again.

JavaScript semantics are reproduced where Python differs, because Venice's server is a
JavaScript (Zod) application:

* string lengths are counted in UTF-16 code units (:func:`js_length`), so an emoji counts 2;
* "trimmed" means ``String.prototype.trim`` (:func:`js_trim`), whose whitespace set differs
  slightly from :meth:`str.strip`;
* a JSON number with an integral value (``30.0``) *is* an integer.

Assumptions where the reference is silent (all [INF]):

* an optional field the model does not support is rejected whenever it is *present*, even with
  a falsy value (observed for ``force_instrumental``; applied to every optional field, in line
  with "an unsupported option is a 400, never silently ignored");
* prompt and lyrics limits apply to the trimmed text;
* ``duration_seconds`` on ``quote`` obeys the same per-model rules as on ``queue``;
* ``character_count`` is accepted, and ignored, for models not priced per character;
* error messages of per-model rules are this module's own wording (Venice's are unknown),
  except "This model does not support duration_seconds", which was observed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeGuard

import attrs

__all__ = [
    "Issue",
    "RequestKind",
    "check_quote_body",
    "check_queue_body",
    "default_duration",
    "has_duration_metadata",
    "is_finite_number",
    "js_length",
    "js_trim",
    "model_issues",
    "model_spec",
    "parse_duration",
    "queue_issues",
    "quote_issues",
    "schema_issues",
]

RequestKind = Literal["quote", "queue", "retrieve", "complete"]

#: ``min_prompt_length`` when a row does not publish one.
DEFAULT_MIN_PROMPT_LENGTH = 10
#: ``lyrics_character_limit`` when a row does not publish one.
DEFAULT_LYRICS_LIMIT = 4096
#: Minimum lyrics length of the MiniMax 2.5 / 2.6 rules.
MINIMAX_MIN_LYRICS = 10

_SPEED_MIN = 0.25
_SPEED_MAX = 4.0
_DIGITS = re.compile(r"[0-9]+")  # JS ``\d`` is ASCII only, unlike Python's
_ISO_639_1 = re.compile(r"[A-Za-z]{2}")

# Whitespace removed by JavaScript's String.prototype.trim (WhiteSpace + LineTerminator).
_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)

# (field, type, required) in schema order; Zod reports issues in this order.
_FieldType = Literal["string", "prompt", "boolean", "duration", "positive_int", "speed"]
_SCHEMAS: dict[str, tuple[tuple[str, _FieldType, bool], ...]] = {
    "quote": (
        ("model", "string", True),
        ("duration_seconds", "duration", False),
        ("character_count", "positive_int", False),
    ),
    "queue": (
        ("model", "string", True),
        ("prompt", "prompt", True),
        ("lyrics_prompt", "string", False),
        ("duration_seconds", "duration", False),
        ("force_instrumental", "boolean", False),
        ("lyrics_optimizer", "boolean", False),
        ("loop", "boolean", False),
        ("voice", "string", False),
        ("language_code", "string", False),
        ("speed", "speed", False),
    ),
    "retrieve": (
        ("model", "string", True),
        ("queue_id", "string", True),
        ("delete_media_on_completion", "boolean", False),
    ),
    "complete": (
        ("model", "string", True),
        ("queue_id", "string", True),
    ),
}


@attrs.frozen
class Issue:
    """One validation problem, shaped like a Zod issue.

    Attributes:
        path: the offending field (empty for the whole body).
        message: human-readable text.
        code: Zod issue code (``custom`` for per-model rules).
        extra: further Zod issue members (``keys``, ``expected``, ``params`` ...).
    """

    path: tuple[str, ...]
    message: str
    code: str = "custom"
    extra: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    @property
    def field(self) -> str:
        """The first path element, or ``""`` for a body-level issue."""
        return self.path[0] if self.path else ""

    def to_json(self) -> dict[str, Any]:
        """The issue as it appears in a DetailedError's ``issues`` list."""
        return {"code": self.code, **self.extra, "path": list(self.path), "message": self.message}


# --- JavaScript string semantics ---------------------------------------------------------


def js_trim(text: str) -> str:
    """``String.prototype.trim``: strip JavaScript whitespace and line terminators."""
    return text.strip(_JS_WHITESPACE)


def js_length(text: str) -> int:
    """``String.prototype.length``: the number of UTF-16 code units."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _js_number(value: Any) -> str:
    """Format a number the way JavaScript prints it in messages (``4`` not ``4.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_type(value: Any) -> str:
    """Zod's name of a parsed JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_finite_number(value: Any) -> TypeGuard[float]:
    """A JSON number (not a boolean), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return is_finite_number(value) and float(value).is_integer()


# --- schema layer ------------------------------------------------------------------------


def _type_issue(field: str, expected: str, value: Any, *, missing: bool = False) -> Issue:
    received = "undefined" if missing else _json_type(value)
    message = "Required" if missing else f"Expected {expected}, received {received}"
    return Issue((field,), message, "invalid_type", {"expected": expected, "received": received})


def _field_issue(field: str, kind: _FieldType, value: Any) -> Issue | None:
    if kind in ("string", "prompt"):
        if not isinstance(value, str):
            return _type_issue(field, "string", value)
        if kind == "prompt" and len(value) < 1:
            return Issue(
                (field,),
                "String must contain at least 1 character(s)",
                "too_small",
                {"minimum": 1, "type": "string", "inclusive": True, "exact": False},
            )
        return None
    if kind == "boolean":
        return None if isinstance(value, bool) else _type_issue(field, "boolean", value)
    if kind == "duration":
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            return None
        if _is_integer(value) and value > 0:
            return None
        return Issue((field,), "Invalid input", "invalid_union")
    # positive_int / speed: numbers
    if not is_finite_number(value):
        return _type_issue(field, "integer" if kind == "positive_int" else "number", value)
    if kind == "positive_int":
        if not float(value).is_integer():
            return Issue(
                (field,),
                "Expected integer, received float",
                "invalid_type",
                {"expected": "integer", "received": "float"},
            )
        if value <= 0:
            return Issue(
                (field,),
                "Number must be greater than 0",
                "too_small",
                {"minimum": 0, "type": "number", "inclusive": False, "exact": False},
            )
        return None
    if value < _SPEED_MIN:
        return Issue(
            (field,),
            f"Number must be greater than or equal to {_js_number(_SPEED_MIN)}",
            "too_small",
            {"minimum": _SPEED_MIN, "type": "number", "inclusive": True, "exact": False},
        )
    if value > _SPEED_MAX:
        return Issue(
            (field,),
            f"Number must be less than or equal to {_js_number(_SPEED_MAX)}",
            "too_big",
            {"maximum": _SPEED_MAX, "type": "number", "inclusive": True, "exact": False},
        )
    return None


def schema_issues(kind: RequestKind, body: Any, accepted: Collection[str] = ()) -> list[Issue]:
    """Check ``body`` against the strict OpenAPI schema of a ``kind`` request.

    Returns an empty list when the body conforms. ``accepted``: further keys let through
    unchecked (``FakeServer(accept_extra_fields=...)``).

    Raises:
        KeyError: ``kind`` is not one of the four request kinds.
    """
    fields = _SCHEMAS[kind]
    if not isinstance(body, dict):
        return [
            Issue(
                (),
                f"Expected object, received {_json_type(body)}",
                "invalid_type",
                {"expected": "object", "received": _json_type(body)},
            )
        ]
    issues: list[Issue] = []
    for name, field_type, required in fields:
        if name not in body:
            if required:
                expected = "string" if field_type in ("string", "prompt") else "number"
                issues.append(_type_issue(name, expected, None, missing=True))
            continue
        issue = _field_issue(name, field_type, body[name])
        if issue is not None:
            issues.append(issue)
    known = {name for name, _, _ in fields}
    unknown = [key for key in body if key not in known and key not in accepted]
    if unknown:
        listed = ", ".join(f"'{key}'" for key in unknown)
        issues.append(
            Issue(
                (),
                f"Unrecognized key(s) in object: {listed}",
                "unrecognized_keys",
                {"keys": unknown},
            )
        )
    return issues


# --- catalogue helpers -------------------------------------------------------------------


def model_spec(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A catalogue row's ``model_spec`` (empty when missing or not an object)."""
    spec = row.get("model_spec")
    return spec if isinstance(spec, Mapping) else {}


def _flag(spec: Mapping[str, Any], key: str) -> bool:
    return spec.get(key) is True


def has_duration_metadata(row: Mapping[str, Any]) -> bool:
    """Whether the model publishes ``duration_options``, ``min_duration`` or ``max_duration``."""
    spec = model_spec(row)
    options = spec.get("duration_options")
    return (
        bool(options)
        or spec.get("min_duration") is not None
        or spec.get("max_duration") is not None
    )


def default_duration(row: Mapping[str, Any]) -> int | None:
    """The seconds a request without ``duration_seconds`` is generated (and priced) at.

    ``default_duration`` when published, else the shortest allowed length; ``None`` for models
    without duration metadata.
    """
    spec = model_spec(row)
    if not has_duration_metadata(row):
        return None
    for key in ("default_duration", "min_duration"):
        value = spec.get(key)
        if is_finite_number(value):
            return int(value)
    options = spec.get("duration_options")
    if isinstance(options, list) and options:
        return int(min(options))
    maximum = spec.get("max_duration")
    return int(maximum) if is_finite_number(maximum) else None


def parse_duration(value: Any) -> int | None:
    """``duration_seconds`` as an int (accepts digit-only strings); ``None`` if not valid."""
    if isinstance(value, str):
        return int(value) if _DIGITS.fullmatch(value) else None
    if _is_integer(value):
        return int(value)
    return None


# --- per-model layer ---------------------------------------------------------------------


def _unsupported(field: str) -> Issue:
    return Issue((field,), f"This model does not support {field}")


def _duration_issues(row: Mapping[str, Any], value: Any) -> list[Issue]:
    spec = model_spec(row)
    if row.get("id") == "seed-audio-1-0" or not has_duration_metadata(row):
        return [_unsupported("duration_seconds")]
    seconds = parse_duration(value)
    if seconds is None:  # pragma: no cover - the schema layer rejected it already
        return []
    options = spec.get("duration_options")
    if isinstance(options, list) and options:
        if not any(is_finite_number(option) and option == seconds for option in options):
            allowed = ", ".join(_js_number(option) for option in options)
            return [Issue(("duration_seconds",), f"duration_seconds must be one of: {allowed}")]
        return []
    low, high = spec.get("min_duration"), spec.get("max_duration")
    if (is_finite_number(low) and seconds < low) or (is_finite_number(high) and seconds > high):
        low_text = _js_number(low) if is_finite_number(low) else "1"
        high_text = _js_number(high) if is_finite_number(high) else "unbounded"
        return [
            Issue(
                ("duration_seconds",),
                f"duration_seconds must be between {low_text} and {high_text}",
            )
        ]
    return []


def _queue_model_issues(
    body: Mapping[str, Any], row: Mapping[str, Any], bad: set[str]
) -> list[Issue]:
    spec = model_spec(row)
    model_id = row.get("id")
    issues: list[Issue] = []

    def present(field: str) -> bool:
        return field in body and field not in bad

    if present("prompt"):
        length = js_length(js_trim(body["prompt"]))
        minimum = spec.get("min_prompt_length", DEFAULT_MIN_PROMPT_LENGTH)
        limit = spec.get("prompt_character_limit")
        if is_finite_number(minimum) and length < minimum:
            issues.append(
                Issue(("prompt",), f"prompt must be at least {_js_number(minimum)} characters")
            )
        elif is_finite_number(limit) and length > limit:
            issues.append(
                Issue(("prompt",), f"prompt must be at most {_js_number(limit)} characters")
            )

    lyrics = js_trim(body["lyrics_prompt"]) if present("lyrics_prompt") else ""
    force_instrumental = present("force_instrumental") and body["force_instrumental"] is True
    optimizer = present("lyrics_optimizer") and body["lyrics_optimizer"] is True
    if not _flag(spec, "supports_lyrics"):
        if present("lyrics_prompt"):
            issues.append(_unsupported("lyrics_prompt"))
    elif "lyrics_prompt" not in bad:
        required = _flag(spec, "lyrics_required") or model_id == "minimax-music-v2"
        limit = spec.get("lyrics_character_limit", DEFAULT_LYRICS_LIMIT)
        if required and not lyrics:
            issues.append(Issue(("lyrics_prompt",), "lyrics_prompt is required for this model"))
        elif is_finite_number(limit) and js_length(lyrics) > limit:
            issues.append(
                Issue(
                    ("lyrics_prompt",),
                    f"lyrics_prompt must be at most {_js_number(limit)} characters",
                )
            )
        elif (
            model_id == "minimax-music-v25"
            and not (force_instrumental or optimizer)
            and js_length(lyrics) < MINIMAX_MIN_LYRICS
        ):
            issues.append(
                Issue(
                    ("lyrics_prompt",),
                    f"lyrics_prompt must be at least {MINIMAX_MIN_LYRICS} characters "
                    "unless force_instrumental or lyrics_optimizer is true",
                )
            )
        elif (
            model_id == "minimax-music-v26"
            and not force_instrumental
            and js_length(lyrics) < MINIMAX_MIN_LYRICS
        ):
            issues.append(
                Issue(
                    ("lyrics_prompt",),
                    f"lyrics_prompt must be at least {MINIMAX_MIN_LYRICS} characters "
                    "unless force_instrumental is true",
                )
            )

    if present("lyrics_optimizer"):
        if not _flag(spec, "supports_lyrics_optimizer"):
            issues.append(_unsupported("lyrics_optimizer"))
        elif optimizer and lyrics:
            issues.append(
                Issue(
                    ("lyrics_optimizer",),
                    "lyrics_prompt must be empty when lyrics_optimizer is true",
                )
            )

    if present("duration_seconds"):
        issues.extend(_duration_issues(row, body["duration_seconds"]))

    for field, flag in (
        ("force_instrumental", "supports_force_instrumental"),
        ("loop", "supports_loop"),
    ):
        if present(field) and not _flag(spec, flag):
            issues.append(_unsupported(field))

    if present("voice"):
        voice = body["voice"]
        voices = spec.get("voices")
        voices = [v for v in voices if isinstance(v, str)] if isinstance(voices, list) else []
        custom = _flag(spec, "supports_custom_voice_id")
        if not voices and not custom:
            issues.append(_unsupported("voice"))
        elif voice not in voices and not (custom and js_trim(voice)):
            issues.append(
                Issue(
                    ("voice",),
                    f"Invalid voice '{voice}'. Supported voices: {', '.join(voices)}",
                    extra={"params": {"supported_voices": voices}},
                )
            )

    if present("language_code"):
        if not _flag(spec, "supports_language_code"):
            issues.append(_unsupported("language_code"))
        elif not _ISO_639_1.fullmatch(body["language_code"]):
            issues.append(
                Issue(("language_code",), "language_code must be an ISO 639-1 code (2 letters)")
            )

    if present("speed"):
        if not _flag(spec, "supports_speed"):
            issues.append(_unsupported("speed"))
        else:
            low = spec.get("min_speed", _SPEED_MIN)
            high = spec.get("max_speed", _SPEED_MAX)
            speed = body["speed"]
            if (is_finite_number(low) and speed < low) or (is_finite_number(high) and speed > high):
                issues.append(
                    Issue(
                        ("speed",),
                        f"speed must be between {_js_number(low)} and {_js_number(high)}",
                    )
                )
    return issues


def _quote_model_issues(
    body: Mapping[str, Any], row: Mapping[str, Any], bad: set[str]
) -> list[Issue]:
    spec = model_spec(row)
    issues: list[Issue] = []
    if "duration_seconds" in body and "duration_seconds" not in bad:
        issues.extend(_duration_issues(row, body["duration_seconds"]))
    pricing = spec.get("pricing")
    if isinstance(pricing, Mapping) and "per_thousand_characters" in pricing:
        if "character_count" not in body:
            issues.append(Issue(("character_count",), "character_count is required for this model"))
        elif "character_count" not in bad:
            limit = spec.get("prompt_character_limit")
            if is_finite_number(limit) and body["character_count"] > limit:
                issues.append(
                    Issue(
                        ("character_count",),
                        f"character_count must be at most {_js_number(limit)}",
                    )
                )
    return issues


def _row_issues(row: Mapping[str, Any]) -> list[Issue]:
    """A non-music or voice-changer model cannot be used on the audio queue."""
    if row.get("type") != "music" or _flag(model_spec(row), "voice_changer"):
        return [Issue(("model",), "Invalid model specified")]
    return []


def model_issues(kind: Literal["quote", "queue"], body: Any, row: Mapping[str, Any]) -> list[Issue]:
    """Per-model issues of a body, skipping fields that fail the schema.

    Returns an empty list if ``body`` is not an object (the schema layer reports that).
    """
    if not isinstance(body, dict):
        return []
    bad = {issue.field for issue in schema_issues(kind, body)}
    issues = _row_issues(row)
    if kind == "queue":
        issues.extend(_queue_model_issues(body, row, bad))
    else:
        issues.extend(_quote_model_issues(body, row, bad))
    return issues


def queue_issues(body: Any, row: Mapping[str, Any]) -> list[Issue]:
    """Every problem of a ``queue`` body for the model ``row`` (schema first, then model)."""
    return schema_issues("queue", body) + model_issues("queue", body, row)


def quote_issues(body: Any, row: Mapping[str, Any]) -> list[Issue]:
    """Every problem of a ``quote`` body for the model ``row`` (schema first, then model)."""
    return schema_issues("quote", body) + model_issues("quote", body, row)


def check_queue_body(body: Any, row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Validate a ``queue`` body against ``row`` as the fake server does.

    Returns:
        ``(field, message)`` pairs, ``field`` being ``""`` for body-level problems (such as
        unknown keys); an empty list means the server accepts the body.
    """
    return [(issue.field, issue.message) for issue in queue_issues(body, row)]


def check_quote_body(body: Any, row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Validate a ``quote`` body against ``row`` as the fake server does.

    Returns:
        ``(field, message)`` pairs; an empty list means the server accepts the body.
    """
    return [(issue.field, issue.message) for issue in quote_issues(body, row)]
