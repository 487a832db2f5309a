"""The model catalogue and prices: fetched once per session, used to check and price jobs.

:class:`Catalogue` caches ``GET /models`` (the rules each request is validated against) and
every ``quote`` answer (prices move slowly; one answer per session is enough), and estimates
a job's price from the catalogue's pricing, asking ``quote`` only when that cannot tell.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from .._client import VeniceClient
from .._core.errors import RequestValidationError, VeniceError
from .._core.models import (
    AudioModel,
    FieldProblem,
    PerThousandCharactersPricing,
    QueueRequest,
    QuoteRequest,
    QuoteResult,
)
from .._core.validation import check_quote, estimate_cost_usd
from .._rate.limiter import RequestLimiter
from .._rate.retry import Retrier

__all__ = ["Catalogue"]

log = logging.getLogger("venice_audio_async")


class Catalogue:
    """The session's catalogue cache, quote cache and price estimates."""

    def __init__(
        self,
        *,
        client: VeniceClient,
        retrier: Retrier,
        limiter: RequestLimiter,
        models: Sequence[AudioModel] | None = None,
        validate: bool = True,
    ) -> None:
        self._client = client
        self._retrier = retrier
        self._limiter = limiter
        self._models: dict[str, AudioModel] | None = (
            {m.id: m for m in models} if models is not None else None
        )
        self._lock = anyio.Lock()
        self._quotes: dict[QuoteRequest, QuoteResult] = {}
        self._validate = validate
        #: Unknown models the catalogue was read again for since its last read.
        self._refreshed_for: set[str] = set()

    def should_validate(self, override: bool | None) -> bool:
        """Whether to validate a request (the call's ``validate=``, else the session's)."""
        return self._validate if override is None else override

    async def models(self, *, refresh: bool = False) -> tuple[AudioModel, ...]:
        """The music catalogue, fetched once (or again with ``refresh``).

        Raises:
            APIStatusError, TransportError: the catalogue could not be fetched.
        """
        async with self._lock:
            if self._models is None or refresh:
                await self._fetch()
            assert self._models is not None
            return tuple(self._models.values())

    async def _fetch(self) -> None:
        """Read the catalogue (the caller holds the lock)."""
        rows = await self._retrier.call("models", self._client.models, limiter=self._limiter)
        self._models = {m.id: m for m in rows}
        self._refreshed_for.clear()

    async def model_for(self, model_id: str) -> AudioModel:
        """The catalogue row of ``model_id``.

        A model the catalogue does not list is looked for once more in a fresh read (it
        may have been added since the catalogue was read), then refused; that fresh read
        happens once per unknown model until the catalogue is read again.

        Raises:
            RequestValidationError: the catalogue has no such model.
            APIStatusError, TransportError: the catalogue could not be fetched.
        """
        async with self._lock:
            if self._models is None:
                await self._fetch()
            elif (
                model_id not in self._models
                and model_id not in self._refreshed_for
                and str(model_id).strip()  # a blank id is refused by its shape alone
            ):
                log.info("model %r is not in the catalogue; reading the catalogue again", model_id)
                await self._fetch()
                self._refreshed_for.add(model_id)
            catalogue = self._models
        assert catalogue is not None
        if model_id not in catalogue:
            known = ", ".join(sorted(catalogue)) or "none"
            raise RequestValidationError(
                (FieldProblem("model", f"unknown model {model_id!r}; known: {known}"),),
                model=model_id,
            )
        return catalogue[model_id]

    async def rules_for(self, model_id: str, validate: bool | None) -> AudioModel | None:
        """The row to validate a request against, or ``None`` when validation is off.

        The model must be in the catalogue either way: a request for an unknown model would
        only earn a 404 that counts toward the key's failed-request lockout.

        Raises:
            RequestValidationError: the catalogue has no such model.
            APIStatusError, TransportError: the catalogue could not be fetched.
        """
        row = await self.model_for(model_id)
        return row if self.should_validate(validate) else None

    async def quote(self, request: QuoteRequest, *, validate: bool | None = None) -> QuoteResult:
        """The price of ``request`` in USD, asked once per session.

        Raises:
            RequestValidationError: the request breaks the model's rules (nothing sent).
            APIStatusError, TransportError: the quote failed.
        """
        check_quote(request, await self.rules_for(request.model, validate))
        cached = self._quotes.get(request)
        if cached is not None:
            return cached
        result = await self._retrier.call(
            "quote", lambda: self._client.quote(request), limiter=self._limiter
        )
        self._quotes[request] = result
        return result

    def catalogue_price(self, request: QueueRequest, model: AudioModel | None) -> float | None:
        """The price of ``request`` in USD from the catalogue's pricing alone: ``model``'s
        row, else the cached one. Sends nothing; ``None`` when the catalogue cannot tell
        (the model has no pricing, or no catalogue was read yet)."""
        row = model
        if row is None and self._models is not None:
            row = self._models.get(request.model)
        return estimate_cost_usd(request, row) if row is not None else None

    async def estimate_cost(
        self, request: QueueRequest, *, model: AudioModel | None = None
    ) -> float | None:
        """The estimated price of ``request`` in USD, from the catalogue or ``quote``;
        ``None`` when neither can tell (a model without pricing that quote refuses)."""
        row = model
        if row is None:
            if self._models is None:
                try:
                    await self.models()
                except VeniceError as error:
                    log.info("catalogue unavailable for estimates: %s", error)
            row = self._models.get(request.model) if self._models is not None else None
        if row is not None:
            estimate = estimate_cost_usd(request, row)
            if estimate is not None:
                return estimate
        by_characters = row is not None and isinstance(
            row.spec.pricing, PerThousandCharactersPricing
        )
        quote_request = QuoteRequest(
            model=request.model,
            duration_seconds=request.duration_seconds,
            character_count=len(request.prompt) if by_characters else None,
        )
        try:
            return (await self.quote(quote_request, validate=False)).quote
        except VeniceError as error:
            log.info("no price estimate for %s: %s", request.model, error)
            return None
