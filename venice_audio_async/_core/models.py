"""Plain frozen data: the catalogue, requests, responses, jobs and their outcomes.

No class here knows the wire format; field renames, omission of unset fields and tolerance
of unknown keys live in :mod:`._core.converters`.

Unknown is not False: a ``model_spec`` key the catalogue did not send is ``None`` here, and
validation treats it as "let the server decide" (booleans) or "unsupported" (duration
metadata), as the API reference describes the model catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, Union

import attrs

__all__ = [
    "ApiKeyRateLimits",
    "AudioFormat",
    "AudioModel",
    "AudioResult",
    "CompleteRequest",
    "CompleteResult",
    "DurationTier",
    "DurationsPricing",
    "FieldProblem",
    "GenerationPricing",
    "Job",
    "ModelRateLimits",
    "ModelSpec",
    "PerSecondPricing",
    "PerThousandCharactersPricing",
    "Pricing",
    "Processing",
    "QueueOptions",
    "QueueRequest",
    "QuoteRequest",
    "QuoteResult",
    "RetrieveRequest",
    "UnknownPricing",
    "VeniceHeaders",
]

AudioFormat = Literal["mp3", "wav", "flac"]

_FORMAT_BY_MEDIA_TYPE: dict[str, AudioFormat] = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
}


def format_for_media_type(media_type: str) -> AudioFormat | None:
    """The container for an audio media type (parameters after ``;`` ignored)."""
    return _FORMAT_BY_MEDIA_TYPE.get(media_type.split(";", 1)[0].strip().lower())


# --------------------------------------------------------------------------- catalogue


@attrs.frozen
class DurationTier:
    """One price tier of a ``durations`` pricing: ``usd`` for ``min..max_seconds`` inclusive."""

    usd: float
    diem: float | None = None
    min_seconds: float | None = None
    max_seconds: float | None = None


@attrs.frozen
class DurationsPricing:
    """Price by duration tier; keys are the tier names the API uses (``"60"``, ``"120"``...)."""

    tiers: Mapping[str, DurationTier]

    def tier_for(self, seconds: float) -> DurationTier | None:
        """The tier whose inclusive range contains ``seconds``."""
        for tier in self.tiers.values():
            low = tier.min_seconds if tier.min_seconds is not None else float("-inf")
            high = tier.max_seconds if tier.max_seconds is not None else float("inf")
            if low <= seconds <= high:
                return tier
        return None


@attrs.frozen
class GenerationPricing:
    """A flat price per generation."""

    usd: float
    diem: float | None = None


@attrs.frozen
class PerSecondPricing:
    """A price per second of generated audio."""

    usd: float
    diem: float | None = None


@attrs.frozen
class PerThousandCharactersPricing:
    """A price per thousand characters of prompt (voice models)."""

    usd: float
    diem: float | None = None


@attrs.frozen
class UnknownPricing:
    """A pricing shape this version does not know; ``raw`` keeps what the server sent."""

    raw: Mapping[str, Any]


Pricing = Union[  # noqa: UP007 (typing.Union: cattrs dispatches the hook on it)
    DurationsPricing,
    GenerationPricing,
    PerSecondPricing,
    PerThousandCharactersPricing,
    UnknownPricing,
]


@attrs.frozen
class ModelSpec:
    """A music model's ``model_spec``: what it accepts, its limits and its pricing.

    Every optional field is ``None`` when the catalogue did not send it (unknown), which is
    not the same as ``False``. ``extra`` keeps keys this version does not model.
    """

    name: str | None = None
    description: str | None = None
    model_source: str | None = None
    offline: bool | None = None
    privacy: str | None = None
    traits: tuple[str, ...] = ()
    beta: bool | None = None
    beta_model: bool | None = None
    uncensored: bool | None = None
    region_restrictions: tuple[str, ...] | None = None
    deprecation: Mapping[str, Any] | None = None
    pricing: Pricing | None = None
    supports_lyrics: bool | None = None
    lyrics_required: bool | None = None
    lyrics_character_limit: int | None = None
    supports_lyrics_optimizer: bool | None = None
    supports_force_instrumental: bool | None = None
    supports_loop: bool | None = None
    voices: tuple[str, ...] | None = None
    default_voice: str | None = None
    supports_custom_voice_id: bool | None = None
    supports_language_code: bool | None = None
    supports_speed: bool | None = None
    default_speed: float | None = None
    min_speed: float | None = None
    max_speed: float | None = None
    duration_options: tuple[int, ...] | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    default_duration: float | None = None
    supported_formats: tuple[str, ...] | None = None
    default_format: str | None = None
    prompt_character_limit: int | None = None
    min_prompt_length: int | None = None
    voice_changer: bool | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def has_duration_metadata(self) -> bool:
        """Whether the model accepts ``duration_seconds`` at all."""
        return bool(self.duration_options) or (
            self.min_duration is not None or self.max_duration is not None
        )


@attrs.frozen
class AudioModel:
    """One row of ``GET /models?type=music``.

    .. versionadded:: 0.1.0
    """

    id: str
    spec: ModelSpec
    type: str = "music"
    object: str = "model"
    owned_by: str | None = None
    created: int | None = None

    @property
    def name(self) -> str:
        """The display name (the id when the catalogue has none)."""
        return self.spec.name or self.id


# --------------------------------------------------------------------------- requests


@attrs.frozen
class QuoteRequest:
    """Body of ``POST /audio/quote``. Unset fields are omitted from the JSON."""

    model: str
    duration_seconds: int | None = None
    character_count: int | None = None


def _check_extra_body(
    request: object, attribute: attrs.Attribute[Any], extra: Mapping[str, Any] | None
) -> None:
    """``extra_body`` is a JSON object of fields the request does not model."""
    if extra is None:
        return
    if not isinstance(extra, Mapping):
        raise TypeError(
            f"extra_body must be a mapping of field names to JSON values, got {extra!r}"
        )
    modelled = {field.name for field in attrs.fields(QueueRequest)}
    for name in extra:
        if not isinstance(name, str):
            raise TypeError(f"extra_body: field names must be str, got {name!r}")
        if name in modelled:
            raise ValueError(
                f"extra_body: {name!r} is a field of QueueRequest; pass it as {name}=... instead"
            )
    try:
        json.dumps(dict(extra), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"extra_body is not JSON: {error}") from None


@attrs.frozen
class QueueRequest:
    """Body of ``POST /audio/queue``: one generation.

    Unset (``None``) fields are omitted from the JSON, never sent as ``null`` or ``false``:
    the API refuses even ``force_instrumental: false`` on models that do not support it.

    ``key`` is the caller's name for the job (e.g. ``"track-17"``), never sent to the API:
    with a journal, a keyed request whose key is already recorded is not queued again (see
    ``AsyncSession.submit_request``). Unkeyed requests are never deduplicated.

    ``extra_body`` holds fields the library does not model yet (Venice adds queue fields
    often), sent in the body as given: each value must be JSON (checked here), a name may
    not be one of the fields above, and each name is logged once as unchecked. The library
    cannot validate them, and the API's schemas are strict: a field it does not know, or a
    wrong value, is refused with a 400 (:class:`BadRequestError`; nothing is billed).

    .. versionadded:: 0.1.0
    """

    model: str
    prompt: str
    lyrics_prompt: str | None = None
    duration_seconds: int | None = None
    force_instrumental: bool | None = None
    lyrics_optimizer: bool | None = None
    loop: bool | None = None
    voice: str | None = None
    language_code: str | None = None
    speed: float | None = None
    key: str | None = attrs.field(default=None, kw_only=True)
    # Not hashed (a mapping is not hashable); still compared.
    extra_body: Mapping[str, Any] | None = attrs.field(
        default=None, kw_only=True, hash=False, validator=_check_extra_body
    )


class QueueOptions(TypedDict, total=False):
    """The optional fields of :class:`QueueRequest`, as keyword arguments.

    ``AsyncSession.submit`` and ``generate`` take these as ``**options``, so a type checker
    refuses a misspelt option (``duraton_seconds=10``) instead of it failing at run time.

    .. versionadded:: 0.1.0
    """

    lyrics_prompt: str | None
    duration_seconds: int | None
    force_instrumental: bool | None
    lyrics_optimizer: bool | None
    loop: bool | None
    voice: str | None
    language_code: str | None
    speed: float | None
    key: str | None
    extra_body: Mapping[str, Any] | None


@attrs.frozen
class RetrieveRequest:
    """Body of ``POST /audio/retrieve``."""

    model: str
    queue_id: str
    delete_media_on_completion: bool | None = None


@attrs.frozen
class CompleteRequest:
    """Body of ``POST /audio/complete``."""

    model: str
    queue_id: str


# --------------------------------------------------------------------------- responses


@attrs.frozen
class QuoteResult:
    """The answer of ``quote``: the price in USD."""

    quote: float


@attrs.frozen
class Job:
    """A queued generation: what identifies it on the server, and what it was asked to do.

    The ``queue_id`` was paid for; keep it. ``request`` is ``None`` for attached jobs whose
    original request is not known.

    .. versionadded:: 0.1.0
    """

    model: str
    queue_id: str
    request: QueueRequest | None = attrs.field(default=None, eq=False)


@attrs.frozen
class ModelRateLimits:
    """One model's limits as ``GET /api_keys/rate_limits`` lists them.

    ``limits`` maps a type to its amount: ``"RPM"`` (requests per minute), ``"RPD"``
    (requests per day), ``"TPM"`` (tokens per minute); other types are kept as sent.

    .. versionadded:: 0.1.0
    """

    model: str
    limits: Mapping[str, float] = attrs.field(factory=dict)

    @property
    def per_minute(self) -> float | None:
        """Requests per minute, if listed."""
        return self.limits.get("RPM")

    @property
    def per_day(self) -> float | None:
        """Requests per day, if listed."""
        return self.limits.get("RPD")


@attrs.frozen
class ApiKeyRateLimits:
    """The answer of ``GET /api_keys/rate_limits``: the key's tier and limits per model.

    .. versionadded:: 0.1.0
    """

    models: tuple[ModelRateLimits, ...]
    api_tier: str | None = None
    access_permitted: bool | None = None
    next_epoch_begins: str | None = None

    def for_model(self, model: str) -> ModelRateLimits | None:
        """The limits listed for ``model``, if any."""
        return next((m for m in self.models if m.model == model), None)


@attrs.frozen
class Processing:
    """``retrieve`` says the job is still running. Times are in seconds.

    ``average_execution_time`` is the server's P80 estimate of the total run time and
    ``execution_duration`` the time elapsed since queueing.
    """

    average_execution_time: float | None
    execution_duration: float | None
    status: str = "PROCESSING"


@attrs.frozen
class VeniceHeaders:
    """The ``x-venice-*`` headers that come with finished audio (all optional [UNK])."""

    audio_format: str | None = None
    inference_time: float | None = None
    model_id: str | None = None
    model_name: str | None = None
    audio_duration: float | None = None
    audio_subtitle: str | None = None
    version: str | None = None


@attrs.frozen
class AudioResult:
    """Finished audio: in memory (``data``) or stored in a file (``path``).

    ``size`` is the number of bytes received and checked against ``Content-Length``.
    ``queue_id`` and ``model`` name the job it is the audio of (to log, or to give to
    support); ``None`` only for a result built by hand.

    .. versionadded:: 0.1.0
    """

    content_type: str
    format: AudioFormat
    size: int
    data: bytes | None = attrs.field(default=None, repr=False)
    path: Path | None = None
    venice: VeniceHeaders = attrs.field(factory=VeniceHeaders)
    queue_id: str | None = None
    model: str | None = None

    def read_bytes(self) -> bytes:
        """The audio bytes, from memory or from the file."""
        if self.data is not None:
            return self.data
        if self.path is not None:
            return self.path.read_bytes()
        raise ValueError("this result holds neither data nor a path")


@attrs.frozen
class CompleteResult:
    """The answer of ``complete``: ``success`` is False while the job is still running."""

    success: bool


# --------------------------------------------------------------------------- validation


@attrs.frozen
class FieldProblem:
    """One reason a request is invalid: the field and a human sentence."""

    field: str
    message: str
