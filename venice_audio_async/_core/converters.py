"""The one private cattrs converter: every wire rule of the API lives here.

* Requests: unset (``None``) fields are omitted from the body, never sent as ``null``.
* Catalogue: ``modelSource``/``betaModel``/``regionRestrictions`` become snake_case, the
  four pricing shapes become their classes (an unknown shape is kept raw), unknown
  ``model_spec`` keys are kept in ``ModelSpec.extra``, absent keys stay ``None``.
* Responses: extra keys are ignored (the spec allows them), times in ms become seconds.

Anything that does not fit raises :class:`~venice_audio_async.MalformedResponse` from the
``structure_*`` helpers, so callers never see a cattrs exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .errors import MalformedResponse
from .models import (
    ApiKeyRateLimits,
    AudioModel,
    CompleteRequest,
    CompleteResult,
    DurationsPricing,
    DurationTier,
    GenerationPricing,
    Job,
    ModelRateLimits,
    ModelSpec,
    PerSecondPricing,
    PerThousandCharactersPricing,
    Pricing,
    Processing,
    QueueRequest,
    QuoteRequest,
    QuoteResult,
    RetrieveRequest,
    UnknownPricing,
)

__all__ = [
    "converter",
    "structure_catalogue",
    "structure_complete",
    "structure_key_rate_limits",
    "structure_processing",
    "structure_queue_request",
    "structure_queued",
    "structure_quote",
    "unstructure_request",
]

T = TypeVar("T")

converter = cattrs.Converter()

# --------------------------------------------------------------------------- requests

for _request_cls in (QuoteRequest, RetrieveRequest, CompleteRequest):
    converter.register_unstructure_hook(
        _request_cls,
        make_dict_unstructure_fn(_request_cls, converter, _cattrs_omit_if_default=True),
    )
# A request's ``key`` is the caller's, for the journal: it never goes on the wire.
_unstructure_queue = make_dict_unstructure_fn(
    QueueRequest,
    converter,
    _cattrs_omit_if_default=True,
    key=override(omit=True),
    extra_body=override(omit=True),
)


def _queue_body(request: QueueRequest) -> dict[str, Any]:
    """The queue body: the modelled fields, then ``extra_body``'s as given."""
    body: dict[str, Any] = _unstructure_queue(request)
    if request.extra_body:
        body.update(request.extra_body)
    return body


converter.register_unstructure_hook(QueueRequest, _queue_body)

RequestBody = QuoteRequest | QueueRequest | RetrieveRequest | CompleteRequest


def unstructure_request(request: RequestBody) -> dict[str, Any]:
    """The JSON body for a request, with every unset field left out."""
    body: dict[str, Any] = converter.unstructure(request)
    return body


def structure_queue_request(body: Mapping[str, Any]) -> QueueRequest:
    """A :class:`QueueRequest` from its stored body: the fields it does not model go back
    into ``extra_body``."""
    modelled = {field.name for field in attrs.fields(QueueRequest)}
    known = {name: value for name, value in body.items() if name in modelled}
    extra = {name: value for name, value in body.items() if name not in modelled}
    return QueueRequest(**known, extra_body=extra or None)


# --------------------------------------------------------------------------- catalogue

_SPEC_RENAMES = {
    "model_source": "modelSource",
    "beta_model": "betaModel",
    "region_restrictions": "regionRestrictions",
}
_SPEC_WIRE_KEYS = frozenset(
    _SPEC_RENAMES.get(a.name, a.name) for a in attrs.fields(ModelSpec) if a.name != "extra"
)
_PRICE_CLASSES: dict[str, type[GenerationPricing | PerSecondPricing | PerThousandCharactersPricing]]
_PRICE_CLASSES = {
    "generation": GenerationPricing,
    "per_second": PerSecondPricing,
    "per_thousand_characters": PerThousandCharactersPricing,
}


def _structure_pricing(obj: Any, _: Any) -> Pricing:
    if not isinstance(obj, Mapping):
        raise TypeError(f"pricing must be an object, got {type(obj).__name__}")
    if isinstance(obj.get("durations"), Mapping):
        tiers = {
            str(name): converter.structure(tier, DurationTier)
            for name, tier in obj["durations"].items()
        }
        return DurationsPricing(tiers=tiers)
    for key, cls in _PRICE_CLASSES.items():
        if isinstance(obj.get(key), Mapping):
            return converter.structure(obj[key], cls)
    # A pricing shape this version does not know: keep it, price it as unknown.
    return UnknownPricing(raw=dict(obj))


converter.register_structure_hook(Pricing, _structure_pricing)
converter.register_structure_hook(
    Pricing | None, lambda obj, _: None if obj is None else _structure_pricing(obj, None)
)

_structure_spec_fields = make_dict_structure_fn(
    ModelSpec,
    converter,
    **{name: override(rename=wire) for name, wire in _SPEC_RENAMES.items()},  # type: ignore[arg-type]
    extra=override(omit=True),
)


def _structure_spec(obj: Any, _: Any) -> ModelSpec:
    if not isinstance(obj, Mapping):
        raise TypeError(f"model_spec must be an object, got {type(obj).__name__}")
    spec = _structure_spec_fields(obj, ModelSpec)
    extra = {k: v for k, v in obj.items() if k not in _SPEC_WIRE_KEYS}
    return attrs.evolve(spec, extra=extra)


converter.register_structure_hook(ModelSpec, _structure_spec)
converter.register_structure_hook(
    AudioModel,
    make_dict_structure_fn(AudioModel, converter, spec=override(rename="model_spec")),
)


def _wrap(what: str, obj: Any, cls: type[T], endpoint: str | None) -> T:
    try:
        return converter.structure(obj, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise MalformedResponse(
            f"unexpected {what} in the {endpoint or 'API'} response: {exc}", endpoint=endpoint
        ) from exc


def structure_catalogue(payload: Any) -> tuple[AudioModel, ...]:
    """The models of a ``GET /models`` answer (envelope ``{"data": [...]}`` or a bare list)."""
    rows = payload.get("data") if isinstance(payload, Mapping) else payload
    if not isinstance(rows, list):
        raise MalformedResponse("the models answer has no 'data' list", endpoint="models")
    return tuple(_wrap("model row", row, AudioModel, "models") for row in rows)


def structure_quote(payload: Any) -> QuoteResult:
    """``{"quote": 0.69}`` into :class:`QuoteResult` (int or float; extra keys ignored)."""
    if not isinstance(payload, Mapping) or isinstance(payload.get("quote"), bool):
        raise MalformedResponse("the quote answer has no number 'quote'", endpoint="quote")
    return _wrap("quote", payload, QuoteResult, "quote")


def structure_queued(payload: Any) -> Job:
    """``{"model", "queue_id", "status": "QUEUED"}`` into a :class:`Job`."""
    if not (
        isinstance(payload, Mapping)
        and isinstance(payload.get("queue_id"), str)
        and payload["queue_id"]
        and isinstance(payload.get("model"), str)
    ):
        raise MalformedResponse(
            "the queue answer lacks a string 'model' and 'queue_id'", endpoint="queue"
        )
    return Job(model=payload["model"], queue_id=payload["queue_id"])


def _ms_to_seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) / 1000.0


def structure_processing(payload: Any) -> Processing:
    """The JSON ``retrieve`` answer of a running job (times converted from ms to seconds).

    The spec only knows ``PROCESSING``; any other status string (``QUEUED`` is [UNK] but
    seen handled by other clients) is kept and still means "not finished".
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("status"), str):
        raise MalformedResponse("the retrieve JSON answer has no 'status'", endpoint="retrieve")
    return Processing(
        average_execution_time=_ms_to_seconds(payload.get("average_execution_time")),
        execution_duration=_ms_to_seconds(payload.get("execution_duration")),
        status=payload["status"],
    )


def structure_complete(payload: Any) -> CompleteResult:
    """``{"success": bool}``."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("success"), bool):
        raise MalformedResponse("the complete answer has no boolean 'success'", endpoint="complete")
    return CompleteResult(success=payload["success"])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def structure_key_rate_limits(payload: Any) -> ApiKeyRateLimits:
    """``{"data": {"rateLimits": [{"apiModelId", "rateLimits": [{"amount", "type"}]}]}}``.

    Rows without a model id and limits that are not a number with a string type are
    skipped (the spec marks only ``rateLimits`` as required in a row).
    """
    data = payload.get("data") if isinstance(payload, Mapping) else None
    rows = data.get("rateLimits") if isinstance(data, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(rows, list):
        raise MalformedResponse(
            "the rate limits answer has no 'data.rateLimits' list", endpoint="key_rate_limits"
        )
    models: list[ModelRateLimits] = []
    for row in rows:
        if not isinstance(row, Mapping) or not isinstance(row.get("apiModelId"), str):
            continue
        limits: dict[str, float] = {}
        entries = row.get("rateLimits")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, Mapping):
                continue
            amount, kind = _number(entry.get("amount")), entry.get("type")
            if amount is not None and isinstance(kind, str):
                limits[kind] = amount
        models.append(ModelRateLimits(model=row["apiModelId"], limits=limits))
    tier = data.get("apiTier")
    permitted = data.get("accessPermitted")
    epoch = data.get("nextEpochBegins")
    return ApiKeyRateLimits(
        models=tuple(models),
        api_tier=tier.get("id")
        if isinstance(tier, Mapping) and isinstance(tier.get("id"), str)
        else None,
        access_permitted=permitted if isinstance(permitted, bool) else None,
        next_epoch_begins=epoch if isinstance(epoch, str) else None,
    )
