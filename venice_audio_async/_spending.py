"""The session's spending limit: reserve a job's estimated cost before queueing it.

Reservations make concurrent submits safe: two jobs that each fit under the limit but not
together cannot both pass, because the first one's cost is held while it is being queued.
"""

from __future__ import annotations

from ._config import check_number
from ._errors import SpendLimitExceeded

__all__ = ["SpendTracker"]


class SpendTracker:
    """Estimated money spent and held, against an optional limit (USD)."""

    def __init__(self, limit_usd: float | None) -> None:
        if limit_usd is not None:
            check_number("max_spend_usd", limit_usd, inclusive=True)
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0

    def reserve(self, estimate_usd: float | None, *, what: str) -> float:
        """Hold ``estimate_usd`` (unknown counts as 0); returns the amount held.

        Raises:
            SpendLimitExceeded: holding it would exceed the limit; nothing was held.
        """
        amount = estimate_usd or 0.0
        if self.limit_usd is not None:
            total = self.spent_usd + self.reserved_usd + amount
            if total > self.limit_usd + 1e-9:
                raise SpendLimitExceeded(
                    f"{what} would cost about ${amount:.4f}, taking the session to "
                    f"${total:.4f} over its limit of ${self.limit_usd:.2f} "
                    f"(${self.spent_usd:.4f} spent, ${self.reserved_usd:.4f} being queued); "
                    "nothing was sent",
                    estimate_usd=amount,
                    spent_usd=self.spent_usd,
                    limit_usd=self.limit_usd,
                )
        self.reserved_usd += amount
        return amount

    def settle(self, amount: float, *, billed: bool) -> None:
        """Turn a reservation into spending (``billed``) or give it back."""
        self.reserved_usd = max(0.0, self.reserved_usd - amount)
        if billed:
            self.spent_usd += amount
