"""Request budgets: the rate limits one session or many processes share.

:class:`LocalBudget` is a session's own (the default); :class:`RedisBudget` shares one
budget between processes on one key (``pip install 'venice-audio-async[redis]'``); any
object with :class:`RequestBudget`'s methods can be passed as ``AsyncSession(budget=...)``.
:class:`RateWindow`, :class:`BudgetStatistics` and :class:`EndpointStatistics` are what a
budget says of itself; :class:`RunTime` what processes sharing one tell each other of their
finished jobs; :class:`LearnedRateLimits` is what
:meth:`RateLimits.from_api <venice_audio_async.RateLimits.from_api>` found.
"""

# No ``from __future__ import annotations``: it would add ``annotations`` to the module's
# public names (tests/test_exports.py compares them with __all__).
from ._core.config import LearnedRateLimits
from ._rate.budget import LocalBudget, RateWindow, RequestBudget, RunTime
from ._rate.redis_budget import RedisBudget
from ._rate.statistics import BudgetStatistics, EndpointStatistics

__all__ = [
    "BudgetStatistics",
    "EndpointStatistics",
    "LearnedRateLimits",
    "LocalBudget",
    "RateWindow",
    "RedisBudget",
    "RequestBudget",
    "RunTime",
]
