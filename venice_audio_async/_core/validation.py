"""Client-side checks of ``queue`` and ``quote`` requests against the model catalogue.

Everything here is pure: no I/O, no clock, no state. Two layers of checks run:

* **Shape checks** always run, whatever the catalogue says: types (strict: ``bool`` is not an
  ``int``, a digit string is not a duration), non-blank prompt, positive durations, the SPEC
  bound on ``speed`` (0.25 to 4) and the ISO 639-1 form of ``language_code``.
* **Per-model rules** (the API reference's ``quote`` and ``queue`` requests) run only when the
  caller passes the model's catalogue row. ``model=None`` means "the catalogue does not describe
  this model": the per-model rules are skipped and the server decides.

Unknown is not False. The catalogue omits keys that do not apply, and older rows omit
booleans that newer rows send explicitly (the API reference's model catalogue), so:

* an **absent** boolean support flag (``supports_loop`` is ``None``) means "unknown": the
  option is *not* rejected here, the server decides;
* an **explicit** ``False`` means "unsupported": the option is rejected, and since the API
  refuses the mere presence of the key, even ``force_instrumental=False`` is rejected;
* absent **duration metadata** (no ``duration_options``, ``min_duration`` or
  ``max_duration``) means "takes no ``duration_seconds``", as the API documents;
* absent **limits** are not enforced, except the two documented defaults:
  ``min_prompt_length`` 10 and ``lyrics_character_limit`` 4096.

Every problem is collected, field by field, so one :class:`RequestValidationError` tells the
caller everything to fix at once. Field names in problems are the wire names. Lengths are
counted on the trimmed text, as the server trims prompts before measuring them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from .errors import RequestValidationError
from .models import (
    AudioModel,
    DurationsPricing,
    FieldProblem,
    GenerationPricing,
    PerSecondPricing,
    PerThousandCharactersPricing,
    QueueRequest,
    QuoteRequest,
)

__all__ = [
    "check_queue",
    "check_quote",
    "estimate_cost_usd",
    "queue_problems",
    "quote_problems",
]

# The API is JavaScript: it trims with String.prototype.trim and measures .length in UTF-16
# code units, so an emoji counts twice. Counting the same way keeps our verdict its verdict.
_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def _api_trim(text: str) -> str:
    return text.strip(_JS_WHITESPACE)


def _api_length(text: str) -> int:
    """Length after trimming, in UTF-16 code units, as the API counts it."""
    trimmed = _api_trim(text)
    return len(trimmed) + sum(1 for char in trimmed if ord(char) > 0xFFFF)


#: ``min_prompt_length`` when the catalogue does not send it [SKILL].
DEFAULT_MIN_PROMPT_LENGTH = 10
#: ``lyrics_character_limit`` when the catalogue does not send it [SKILL].
DEFAULT_LYRICS_CHARACTER_LIMIT = 4096
#: The bounds of ``speed`` in the SPEC, whatever the model.
SPEC_MIN_SPEED = 0.25
SPEC_MAX_SPEED = 4.0

_LANGUAGE_CODE = re.compile(r"[a-z]{2}")
_VOICES_SHOWN = 5


class _ModelExtra(NamedTuple):
    """Rules a model has beyond its ``model_spec``."""

    #: ``lyrics_prompt`` must be at least this long once trimmed (1 = "non-blank")...
    lyrics_min_length: int | None = None
    #: ...unless one of these boolean request fields is ``True``.
    lyrics_waived_by: tuple[str, ...] = ()
    #: The model refuses ``duration_seconds`` whatever its metadata says.
    no_duration: bool = False


# Model-specific extras of the queue request (from Venice's own usage notes, not the spec);
# the catalogue does not carry them.
_MODEL_EXTRAS: dict[str, _ModelExtra] = {
    "minimax-music-v25": _ModelExtra(
        lyrics_min_length=10, lyrics_waived_by=("force_instrumental", "lyrics_optimizer")
    ),
    "minimax-music-v26": _ModelExtra(
        lyrics_min_length=10, lyrics_waived_by=("force_instrumental",)
    ),
    "minimax-music-v2": _ModelExtra(lyrics_min_length=1),
    "seed-audio-1-0": _ModelExtra(no_duration=True),
}


class _Problems:
    """An ordered collection of problems that remembers which fields already have one."""

    def __init__(self) -> None:
        self._items: list[FieldProblem] = []

    def add(self, field: str, message: str) -> None:
        problem = FieldProblem(field=field, message=message)
        if problem not in self._items:
            self._items.append(problem)

    def has(self, field: str) -> bool:
        return any(p.field == field for p in self._items)

    def result(self) -> tuple[FieldProblem, ...]:
        return tuple(self._items)


# --------------------------------------------------------------------------- formatting


def _num(value: float) -> str:
    """``3.0`` as ``3``, ``0.7`` as ``0.7``."""
    if float(value).is_integer():
        return str(int(value))
    return str(value)


def _type_name(value: object) -> str:
    return type(value).__name__


def _one_of(values: Sequence[object]) -> str:
    return ", ".join(_num(v) if isinstance(v, (int, float)) else str(v) for v in values)


def _range_message(low: float | None, high: float | None, unit: str, got: float) -> str | None:
    """The complaint for ``got`` outside ``low..high`` (either bound may be unknown)."""
    too_low = low is not None and got < low
    too_high = high is not None and got > high
    if not (too_low or too_high):
        return None
    suffix = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f"must be between {_num(low)} and {_num(high)}{suffix} (got {_num(got)})"
    if low is not None:
        return f"must be at least {_num(low)}{suffix} (got {_num(got)})"
    assert high is not None
    return f"must be at most {_num(high)}{suffix} (got {_num(got)})"


# --------------------------------------------------------------------------- shape checks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_model_id(value: object, out: _Problems) -> None:
    if not isinstance(value, str):
        out.add("model", f"must be a string (got {_type_name(value)})")
    elif not _api_trim(value):
        out.add("model", "must not be empty")


def _check_positive_int(field: str, value: object, out: _Problems) -> bool:
    """Whether ``value`` (not ``None``) is a usable positive int; records the problem if not."""
    if not _is_int(value):
        out.add(field, f"must be an integer (got {_type_name(value)} {value!r})")
        return False
    assert isinstance(value, int)
    if value <= 0:
        out.add(field, f"must be greater than 0 (got {value})")
        return False
    return True


def _queue_shape(request: QueueRequest, out: _Problems) -> set[str]:
    """Type and shape checks; returns the fields whose values are unusable."""
    bad: set[str] = set()

    def fail(field: str, message: str) -> None:
        out.add(field, message)
        bad.add(field)

    _check_model_id(request.model, out)

    prompt: object = request.prompt
    if not isinstance(prompt, str):
        fail("prompt", f"must be a string (got {_type_name(prompt)})")
    elif not _api_trim(prompt):
        fail("prompt", "must not be blank")

    lyrics: object = request.lyrics_prompt
    if lyrics is not None and not isinstance(lyrics, str):
        fail("lyrics_prompt", f"must be a string (got {_type_name(lyrics)})")

    duration: object = request.duration_seconds
    if duration is not None and not _check_positive_int("duration_seconds", duration, out):
        bad.add("duration_seconds")

    for field in ("force_instrumental", "lyrics_optimizer", "loop"):
        flag: object = getattr(request, field)
        if flag is not None and not isinstance(flag, bool):
            fail(field, f"must be true or false (got {_type_name(flag)} {flag!r})")

    # SPEC: lyrics_prompt must be empty when lyrics_optimizer is true (any model).
    if request.lyrics_optimizer is True and isinstance(lyrics, str) and _api_trim(lyrics):
        fail("lyrics_optimizer", "must not be true when lyrics_prompt is given")

    voice: object = request.voice
    if voice is not None and not isinstance(voice, str):
        fail("voice", f"must be a string (got {_type_name(voice)})")

    language: object = request.language_code
    if language is not None:
        if not isinstance(language, str):
            fail("language_code", f"must be a string (got {_type_name(language)})")
        elif not _LANGUAGE_CODE.fullmatch(language):
            fail(
                "language_code",
                f'must be a two-letter lowercase ISO 639-1 code such as "en" (got {language!r})',
            )

    speed: object = request.speed
    if speed is not None:
        if not _is_number(speed):
            fail("speed", f"must be a number (got {_type_name(speed)} {speed!r})")
        else:
            assert isinstance(speed, (int, float))
            if not math.isfinite(speed):
                fail("speed", f"must be a finite number (got {speed!r})")
            else:
                message = _range_message(SPEC_MIN_SPEED, SPEC_MAX_SPEED, "", speed)
                if message is not None:
                    fail("speed", message)
    return bad


# --------------------------------------------------------------------------- model rules


def _check_model_kind(model: AudioModel, out: _Problems, *, queue: bool) -> None:
    if model.type != "music":
        out.add("model", f"is a {model.type!r} model; only 'music' models use the audio queue")
    if queue and model.spec.voice_changer is True:
        out.add("model", "is a voice-changer model: it belongs on /audio/voice-changer")


def _check_duration(duration: int, model: AudioModel, out: _Problems) -> None:
    spec = model.spec
    if not spec.has_duration_metadata:
        out.add("duration_seconds", "this model does not support duration_seconds")
    elif spec.duration_options:
        if duration not in spec.duration_options:
            options = _one_of(spec.duration_options)
            out.add("duration_seconds", f"must be one of {options} (got {duration})")
    else:
        message = _range_message(spec.min_duration, spec.max_duration, "seconds", duration)
        if message is not None:
            out.add("duration_seconds", message)


def _unsupported(field: str, flag: bool | None, flag_name: str, out: _Problems) -> bool:
    """Reject a present option whose support flag is explicitly ``False``."""
    if flag is False:
        out.add(field, f"is not supported by this model ({flag_name} is false); leave it unset")
        return True
    return False


def _queue_model_rules(
    request: QueueRequest, model: AudioModel, bad: set[str], out: _Problems
) -> None:
    spec = model.spec
    _check_model_kind(model, out, queue=True)
    if request.model != model.id:
        out.add("model", f"the request names {request.model!r} but the rules are for {model.id!r}")

    # prompt: trimmed length within min_prompt_length..prompt_character_limit.
    if "prompt" not in bad:
        length = _api_length(request.prompt)
        minimum = (
            spec.min_prompt_length
            if spec.min_prompt_length is not None
            else DEFAULT_MIN_PROMPT_LENGTH
        )
        if length < minimum:
            out.add("prompt", f"must be at least {minimum} characters (got {length})")
        limit = spec.prompt_character_limit
        if limit is not None and length > limit:
            out.add("prompt", f"must be at most {limit} characters (got {length})")

    # lyrics_prompt: supports_lyrics, lyrics_required, lyrics_character_limit.
    lyrics = request.lyrics_prompt
    lyrics_ok = "lyrics_prompt" not in bad
    if lyrics is not None:
        _unsupported("lyrics_prompt", spec.supports_lyrics, "supports_lyrics", out)
    if spec.lyrics_required is True and lyrics_ok and (lyrics is None or not _api_trim(lyrics)):
        out.add("lyrics_prompt", "is required by this model and must not be blank")
    if lyrics is not None and lyrics_ok and spec.supports_lyrics is not False:
        limit = (
            spec.lyrics_character_limit
            if spec.lyrics_character_limit is not None
            else DEFAULT_LYRICS_CHARACTER_LIMIT
        )
        length = _api_length(lyrics)
        if length > limit:
            out.add("lyrics_prompt", f"must be at most {limit} characters (got {length})")

    # Options the API refuses by mere presence when the model does not support them.
    if request.force_instrumental is not None:
        _unsupported(
            "force_instrumental",
            spec.supports_force_instrumental,
            "supports_force_instrumental",
            out,
        )
    if request.lyrics_optimizer is not None:
        _unsupported(
            "lyrics_optimizer", spec.supports_lyrics_optimizer, "supports_lyrics_optimizer", out
        )
    if request.loop is not None:
        _unsupported("loop", spec.supports_loop, "supports_loop", out)
    if request.language_code is not None:
        _unsupported("language_code", spec.supports_language_code, "supports_language_code", out)

    # duration_seconds: only with duration metadata; options, else range.
    if request.duration_seconds is not None and "duration_seconds" not in bad:
        _check_duration(request.duration_seconds, model, out)

    # voice: one of voices, or any non-blank id on custom-voice models.
    voice = request.voice
    if voice is not None and "voice" not in bad:
        if spec.supports_custom_voice_id is True:
            if not _api_trim(voice):
                out.add("voice", "must not be blank")
        elif not spec.voices:
            out.add("voice", "is not supported by this model (it has no voices); leave it unset")
        elif voice not in spec.voices:
            shown = _one_of(spec.voices[:_VOICES_SHOWN])
            more = len(spec.voices) - _VOICES_SHOWN
            tail = f" (and {more} more)" if more > 0 else ""
            out.add("voice", f"must be one of {shown}{tail} (got {voice!r})")

    # speed: supports_speed, then min_speed..max_speed.
    if request.speed is not None:
        refused = _unsupported("speed", spec.supports_speed, "supports_speed", out)
        if not refused and "speed" not in bad:
            message = _range_message(spec.min_speed, spec.max_speed, "", request.speed)
            if message is not None:
                out.add("speed", message)

    _model_extras(request, model.id, bad, out)


def _model_extras(request: QueueRequest, model_id: str, bad: set[str], out: _Problems) -> None:
    """The rules of :data:`_MODEL_EXTRAS`, skipped on fields that already have a problem."""
    extra = _MODEL_EXTRAS.get(model_id)
    if extra is None:
        return
    minimum = extra.lyrics_min_length
    if minimum is not None and not out.has("lyrics_prompt") and "lyrics_prompt" not in bad:
        waived = [f for f in extra.lyrics_waived_by if getattr(request, f) is True]
        length = _api_length(request.lyrics_prompt) if request.lyrics_prompt is not None else 0
        if not waived and length < minimum:
            if minimum <= 1:
                out.add("lyrics_prompt", "is required by this model and must not be blank")
            else:
                unless = " or ".join(f"{f} is true" for f in extra.lyrics_waived_by)
                out.add(
                    "lyrics_prompt",
                    f"must be at least {minimum} characters unless {unless} (got {length})",
                )
    if (
        extra.no_duration
        and request.duration_seconds is not None
        and not out.has("duration_seconds")
    ):
        out.add("duration_seconds", "this model does not support duration_seconds")


# --------------------------------------------------------------------------- public API


def queue_problems(request: QueueRequest, model: AudioModel | None) -> tuple[FieldProblem, ...]:
    """Every problem of a ``queue`` request, in field order; empty when it is valid.

    ``model`` is the catalogue row of ``request.model``; ``None`` (a model the catalogue does
    not describe) runs only the type and shape checks. Absent boolean support flags are not
    held against the request; explicit ``False`` ones are (see the module docstring).

    Raises:
        Nothing: problems are returned, never raised (see :func:`check_queue`).
    """
    out = _Problems()
    bad = _queue_shape(request, out)
    if model is not None:
        _queue_model_rules(request, model, bad, out)
    return out.result()


def check_queue(request: QueueRequest, model: AudioModel | None) -> None:
    """Raise when a ``queue`` request breaks a rule; return ``None`` when it is valid.

    Raises:
        RequestValidationError: with every problem found (also a :class:`ValueError`).
    """
    problems = queue_problems(request, model)
    if problems:
        raise RequestValidationError(problems, model=request.model)


def quote_problems(request: QuoteRequest, model: AudioModel | None) -> tuple[FieldProblem, ...]:
    """Every problem of a ``quote`` request; empty when it is valid.

    Shape checks: ``duration_seconds`` and ``character_count`` are positive ints when set.
    With ``model``: ``duration_seconds`` only for models with duration metadata (and within
    their options or range), ``character_count`` required for per-thousand-characters pricing
    and at most ``prompt_character_limit``.

    Raises:
        Nothing: problems are returned, never raised (see :func:`check_quote`).
    """
    out = _Problems()
    _check_model_id(request.model, out)
    duration: object = request.duration_seconds
    duration_ok = duration is not None and _check_positive_int("duration_seconds", duration, out)
    count: object = request.character_count
    count_ok = count is not None and _check_positive_int("character_count", count, out)
    if model is None:
        return out.result()

    spec = model.spec
    _check_model_kind(model, out, queue=False)
    if request.model != model.id:
        out.add("model", f"the request names {request.model!r} but the rules are for {model.id!r}")
    if duration_ok and request.duration_seconds is not None:
        _check_duration(request.duration_seconds, model, out)
    if request.character_count is None:
        if isinstance(spec.pricing, PerThousandCharactersPricing):
            out.add(
                "character_count",
                "is required for this model (it is priced per thousand characters)",
            )
    elif count_ok:
        limit = spec.prompt_character_limit
        if limit is not None and request.character_count > limit:
            out.add(
                "character_count",
                f"must be at most {limit} characters (got {request.character_count})",
            )
    return out.result()


def check_quote(request: QuoteRequest, model: AudioModel | None) -> None:
    """Raise when a ``quote`` request breaks a rule; return ``None`` when it is valid.

    Raises:
        RequestValidationError: with every problem found (also a :class:`ValueError`).
    """
    problems = quote_problems(request, model)
    if problems:
        raise RequestValidationError(problems, model=request.model)


def estimate_cost_usd(request: QueueRequest, model: AudioModel) -> float | None:
    """The expected price in USD of queueing ``request``, from the model's catalogue pricing.

    * ``durations``: the ``usd`` of the tier containing ``duration_seconds`` (or the model's
      ``default_duration``);
    * ``generation``: the flat ``usd``;
    * ``per_second``: ``usd`` times ``duration_seconds`` (or ``default_duration``);
    * ``per_thousand_characters``: ``usd`` times the prompt length over 1000.

    ``None`` when it cannot be told: no or unknown pricing, no duration to price, no tier
    containing it, or a request whose duration or prompt has the wrong type. Catalogue
    prices are base prices; the real charge may differ. Rounded to 6 decimals.

    Raises:
        Nothing.
    """
    pricing = model.spec.pricing
    duration: object = request.duration_seconds
    seconds: float | None
    if duration is None:
        seconds = model.spec.default_duration
    elif _is_int(duration):
        assert isinstance(duration, int)
        seconds = float(duration)
    else:
        seconds = None

    cost: float | None = None
    if isinstance(pricing, GenerationPricing):
        cost = pricing.usd
    elif isinstance(pricing, DurationsPricing):
        tier = pricing.tier_for(seconds) if seconds is not None else None
        cost = tier.usd if tier is not None else None
    elif isinstance(pricing, PerSecondPricing):
        cost = pricing.usd * seconds if seconds is not None else None
    elif isinstance(pricing, PerThousandCharactersPricing):
        prompt: object = request.prompt
        cost = pricing.usd * len(prompt) / 1000 if isinstance(prompt, str) else None
    if cost is None:
        return None
    return round(cost, 6)
