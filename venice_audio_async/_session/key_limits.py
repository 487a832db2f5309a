"""The limits in force, settled at open: the key's own, read once, or the documented ones.

A session that builds its own budget and was not given a pooled figure asks the API once,
at open, for the key's limits (``GET /api_keys/rate_limits``; the catalogue, cached for the
session, tells the audio models apart only when the answer lists per-minute figures). The
lowest requests-per-minute figure of an audio model becomes the pooled limit over the audio
endpoints. When the answer cannot be had, or lists no audio model, Venice's documented
audio limit holds (60 requests/min over the audio endpoints). Either way one INFO line says
which limits are in force and where they come from. Nothing here ever fails the opening.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from .._client import VeniceClient
from .._core.config import (
    RateLimits,
    is_assumed,
    learn_rate_limits,
    limits_in_force,
    pooled_rate,
)
from .._core.errors import VeniceError
from .._core.models import ApiKeyRateLimits, AudioModel
from .._rate.budget import LocalBudget
from .catalogue import Catalogue

__all__ = ["KeyLimits"]

log = logging.getLogger("venice_audio_async")

#: The longest the opening waits for the key's limits (real seconds), then goes on with the
#: documented ones.
_LEARN_SECONDS = 10.0


class _Source:
    """What ``learn_rate_limits`` reads: the client's key limits, the session's catalogue."""

    def __init__(self, client: VeniceClient, catalogue: Catalogue) -> None:
        self._client = client
        self._catalogue = catalogue

    async def models(self) -> Sequence[AudioModel]:
        return await self._catalogue.models()

    async def key_rate_limits(self) -> ApiKeyRateLimits:
        return await self._client.key_rate_limits()


class KeyLimits:
    """Settles the session's limits at open (see the module docstring).

    ``budget``: the in-process budget the session built for itself (``None``: the user gave
    one, or ``VENICE_REDIS_URL`` made a shared one; nothing is asked then); ``rate_limits``:
    what the user gave, defaults filled in.
    """

    def __init__(
        self,
        *,
        client: VeniceClient,
        catalogue: Catalogue,
        budget: LocalBudget | None,
        own_budget: bool,
        rate_limits: RateLimits,
        has_key: bool,
    ) -> None:
        self._source = _Source(client, catalogue)
        self._budget = budget
        self._own_budget = own_budget
        self.rate_limits = rate_limits
        self._has_key = has_key

    @property
    def asks(self) -> bool:
        """Whether opening asks the API (the session's own local budget, a pooled figure
        left to its default, an API key to ask with)."""
        return (
            self._budget is not None
            and self._has_key
            and is_assumed(self.rate_limits.pooled_per_minute)
        )

    async def settle(self) -> RateLimits:
        """Ask once if :attr:`asks`, apply the answer to the budget, log the limits in
        force; never raises but for cancellation."""
        if not self._own_budget:
            return self.rate_limits
        if not is_assumed(self.rate_limits.pooled_per_minute):
            log.info("%s", limits_in_force(self.rate_limits, "as configured"))
            return self.rate_limits
        source = "documented default"
        if self.asks:
            learned = None
            with anyio.move_on_after(_LEARN_SECONDS) as scope:
                try:
                    learned = await learn_rate_limits(
                        self._source, base=self.rate_limits, announce=False
                    )
                except VeniceError as error:
                    log.info(
                        "the key's rate limits could not be read (%s): the documented audio "
                        "limit applies",
                        error,
                    )
            if scope.cancelled_caught:
                log.info(
                    "the key's rate limits did not come within %g s: the documented audio "
                    "limit applies",
                    _LEARN_SECONDS,
                )
            if learned is not None and learned.found:
                self.rate_limits = learned.rate_limits
                source = f"from the API: {learned.model} {learned.pooled_per_minute}/min"
                assert self._budget is not None
                self._budget.set_pool(pooled_rate(self.rate_limits))
            elif learned is not None:
                source = "documented default: the API lists no per-minute limit for audio"
        log.info("%s", limits_in_force(self.rate_limits, source))
        return self.rate_limits
