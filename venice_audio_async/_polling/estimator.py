"""What each audio model's run time is believed to be: a lognormal, learned as jobs finish.

A job's run time ``T`` is taken to be lognormal, ``ln T ~ Normal(mu, sigma)``: positive,
right-skewed, and cheap to fit. :meth:`DurationEstimator.belief` turns what is known into a
:class:`~._polling.run_time_belief.RunTimeBelief`, from the best source available:

1. **A fit of learned ratios to the server's estimate.** A finished job's ``ln(T / h)`` (``h``
   the server's ``average_execution_time`` in force for it) is logged; with ``min_samples``
   of them the fit gives ``mu = ln h + m``, ``sigma = s`` for a job with estimate ``h``. This
   follows the server when its estimate differs from job to job (a 240 s track versus a 30 s
   one) and learns how well calibrated it is.
2. **A fit of learned durations** (``ln T``), used when a job has no estimate of its own yet.
3. **The server's estimate alone**, documented as a P80: ``sigma = prior_spread`` (0.35) and
   ``mu = ln h - sigma * z(0.8)``.
4. **Nothing** (``None``): the scheduler polls after ``first_poll`` to learn the estimate.

Fits are robust to the first finishers of a batch, which are biased short: jobs still running
are **right-censored** observations (each says only "longer than its age"), fitted together
with the finished ones by a few EM steps of the censored normal. Until ``min_samples`` (10)
jobs finished, the prior stands. ``sigma`` is clamped to ``[0.05, 0.6]``: a fit from a few
near-identical durations must not make the policy trust its predictions to the millisecond.

Finished samples sit in bounded windows (the last ``max_samples``) with running sums, so
observing is O(1) and a refit costs O(censored jobs passed in), which the scheduler bounds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from statistics import NormalDist

import attrs

from .._core.config import check_number
from .run_time_belief import RunTimeBelief

__all__ = ["DurationEstimator", "ModelDurationStats", "PollingBounds"]

_NORMAL = NormalDist()
#: z of the 80th percentile: the server's ``average_execution_time`` is a P80.
_Z80 = _NORMAL.inv_cdf(0.8)
#: Fitted sigmas are kept within these.
SIGMA_RANGE = (0.05, 0.6)
_EM_STEPS = 12
#: Pseudo observations of the prior spread in every fit.
_PRIOR_WEIGHT = 5
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@attrs.frozen(kw_only=True)
class PollingBounds:
    """How the scheduler spends the retrieve budget, in seconds.

    The scheduler polls the running job whose poll is worth most (the delay it has probably
    accrued since its last poll), once that worth exceeds a price. The price starts at
    ``delay_per_poll`` and rises as the rate limit's window fills, so a burst of jobs
    never starves the rest of the window (see docs/polling.md).

    Args:
        min_interval: never poll one job sooner than this after its previous poll.
        max_interval: never leave a job unpolled longer than this (a safety net in case the
            server's estimate is badly wrong).
        first_poll: delay of the first poll of a job of a model nothing is known about (its
            answer brings the server's estimate).
        delay_per_poll: seconds of delay one poll is worth saving, while the budget has room.
            Lower polls more and hands results over sooner: for one ~30 s job at a time,
            0.04 s (the default) gives about 13.5 polls and 0.5 s median delay, 0.01 s
            about 26 polls and 0.25 s. When the budget binds, the price is set by the
            window instead and this floor does not matter.
        retrieve_share: the share of the retrieve rate limit the poller may use (1: all of
            it). Lower it when other clients use the same key without a shared budget.

    Raises:
        ValueError: a non-positive value, ``min_interval > max_interval`` or a
            ``retrieve_share`` above 1.

    .. versionadded:: 0.1.0
    """

    min_interval: float = 0.5
    max_interval: float = 300.0
    first_poll: float = 1.0
    delay_per_poll: float = 0.04
    retrieve_share: float = 1.0

    def __attrs_post_init__(self) -> None:
        for name in ("min_interval", "max_interval", "first_poll", "delay_per_poll"):
            check_number(name, getattr(self, name))
        check_number("retrieve_share", self.retrieve_share)
        if self.retrieve_share > 1:
            raise ValueError(f"retrieve_share must be at most 1, got {self.retrieve_share!r}")
        if self.min_interval > self.max_interval:
            raise ValueError(
                f"min_interval ({self.min_interval}) must not exceed "
                f"max_interval ({self.max_interval})"
            )

    def clamp(self, delay: float) -> float:
        """``delay`` limited to ``[min_interval, max_interval]``."""
        return min(self.max_interval, max(self.min_interval, delay))


class _LogWindow:
    """The last ``maxlen`` values with running sums of values and squares (shifted)."""

    __slots__ = ("_evictions", "_shift", "_sum", "_sum_sq", "_values")

    def __init__(self, maxlen: int) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)
        self._shift = 0.0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._evictions = 0

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: float) -> None:
        values = self._values
        if not values:
            self._shift = value
        elif len(values) == values.maxlen:
            old = values[0] - self._shift
            self._sum -= old
            self._sum_sq -= old * old
            self._evictions += 1
        values.append(value)
        shifted = value - self._shift
        self._sum += shifted
        self._sum_sq += shifted * shifted
        if self._evictions >= len(values):
            self._rebuild()

    def _rebuild(self) -> None:
        values = self._values
        self._shift = self._shift + self._sum / len(values)
        self._sum = math.fsum(v - self._shift for v in values)
        self._sum_sq = math.fsum((v - self._shift) ** 2 for v in values)
        self._evictions = 0

    def mean(self) -> float:
        return self._shift + self._sum / len(self._values)

    def std(self) -> float | None:
        """Sample standard deviation; ``None`` with fewer than two values."""
        n = len(self._values)
        if n < 2:
            return None
        variance = (self._sum_sq - self._sum * self._sum / n) / (n - 1)
        return math.sqrt(max(0.0, variance))


@attrs.frozen
class ModelDurationStats:
    """What a :class:`DurationEstimator` knows about one model.

    ``median`` and ``sigma`` describe the current fit to durations (``None`` before
    ``min_samples`` finished); ``ratio_median`` is the fitted median of duration / server
    estimate; ``hint`` the latest server estimate (P80, seconds).

    .. versionadded:: 0.1.0
    """

    model: str
    samples: int
    median: float | None
    sigma: float | None
    ratio_samples: int
    ratio_median: float | None
    ratio_sigma: float | None
    hint: float | None


class _ModelState:
    __slots__ = ("duration_fit", "durations", "hint", "ratio_fit", "ratios")

    def __init__(self, max_samples: int) -> None:
        self.hint: float | None = None
        self.durations = _LogWindow(max_samples)
        self.ratios = _LogWindow(max_samples)
        self.duration_fit: tuple[float, float] | None = None
        self.ratio_fit: tuple[float, float] | None = None


def _valid_seconds(value: float | None) -> float | None:
    if value is None or not (math.isfinite(value) and value > 0):
        return None
    return float(value)


def _inverse_mills(alpha: float) -> float:
    """``phi(a) / Phi_c(a)``, the mean excess of a standard normal above ``a``."""
    tail = 0.5 * math.erfc(alpha / math.sqrt(2.0))
    if tail > 1e-12:
        return _INV_SQRT_2PI * math.exp(-0.5 * alpha * alpha) / tail
    return alpha + 1.0 / alpha


def censored_normal_fit(
    finished: _LogWindow,
    censored: list[float],
    start: tuple[float, float],
    prior_sigma: float,
) -> tuple[float, float]:
    """``(mu, sigma)`` of a normal from finished values and right-censored ones (EM).

    The variance is shrunk towards ``prior_sigma`` with :data:`_PRIOR_WEIGHT` pseudo
    observations: a fit from a few jobs underestimates the spread, and an overconfident
    belief polls the jobs in its tail too often (they always look about to finish).
    """
    n_done = len(finished)
    mean_done = finished.mean()
    sd_done = finished.std() or 0.0
    sum_done = n_done * mean_done
    sum_sq_done = (n_done - 1) * sd_done * sd_done + n_done * mean_done * mean_done
    n = n_done + len(censored)
    mu, sigma = start
    for _ in range(_EM_STEPS if censored else 1):
        total, total_sq = sum_done, sum_sq_done
        for c in censored:
            lam = _inverse_mills((c - mu) / sigma)
            total += mu + sigma * lam
            total_sq += mu * mu + sigma * sigma + sigma * (c + mu) * lam
        mu = total / n
        variance = max(total_sq / n - mu * mu, 0.0)
        variance = (n * variance + _PRIOR_WEIGHT * prior_sigma**2) / (n + _PRIOR_WEIGHT)
        sigma = min(SIGMA_RANGE[1], max(SIGMA_RANGE[0], math.sqrt(variance)))
    return mu, sigma


class DurationEstimator:
    """Learns each model's run time; says what a job's run time is believed to be.

    See the module documentation for the sources and the fit.

    Args:
        bounds: the polling settings (kept here for the scheduler).
        prior_spread: ``sigma`` of ``ln T`` while only the server's estimate is known.
        min_samples: finished jobs needed before a fit replaces the prior.
        max_samples: finished jobs kept per model (the most recent).

    Raises:
        ValueError: a non-positive spread or sample count, or ``min_samples > max_samples``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        bounds: PollingBounds = PollingBounds(),
        prior_spread: float = 0.35,
        min_samples: int = 10,
        max_samples: int = 200,
    ) -> None:
        check_number("prior_spread", prior_spread)
        if min_samples < 2 or max_samples < min_samples:
            raise ValueError(
                f"need 2 <= min_samples <= max_samples, got {min_samples}, {max_samples}"
            )
        self.bounds = bounds
        self._prior_spread = float(prior_spread)
        self._min_samples = min_samples
        self._max_samples = max_samples
        self._models: dict[str, _ModelState] = {}
        self._beliefs: dict[tuple[float, float], RunTimeBelief] = {}

    def __repr__(self) -> str:
        return f"DurationEstimator(bounds={self.bounds!r}, models={len(self._models)})"

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState(self._max_samples)
        return state

    def observe_hint(self, model: str, average_execution_time: float | None) -> None:
        """Remember the server's latest estimate (P80, seconds) for ``model``.

        ``None``, zero, negative or non-finite values are ignored.
        """
        hint = _valid_seconds(average_execution_time)
        if hint is not None:
            self._state(model).hint = hint

    def observe_duration(self, model: str, seconds: float, *, hint: float | None = None) -> None:
        """Learn a finished job's run time (seconds, counted as ages are).

        ``hint`` is the server's estimate for that job (default: the model's latest); with
        one, the ratio duration / estimate is learned too. Non-positive or non-finite
        durations are ignored. The fit is updated by :meth:`refit`.
        """
        duration = _valid_seconds(seconds)
        if duration is None:
            return
        state = self._state(model)
        log_duration = math.log(duration)
        state.durations.add(log_duration)
        reference = _valid_seconds(hint) or state.hint
        if reference is not None:
            state.ratios.add(log_duration - math.log(reference))

    def refit(self, model: str, running: Iterable[tuple[float, float | None]] = ()) -> bool:
        """Refit ``model`` from its finished jobs and ``running`` ones, ``(age, hint)`` pairs
        (right-censored at their age). Returns whether the fit moved materially."""
        state = self._models.get(model)
        if state is None or len(state.durations) < self._min_samples:
            return False
        ages: list[float] = []
        ratios: list[float] = []
        for age, hint in running:
            if age > 0:
                ages.append(math.log(age))
                reference = _valid_seconds(hint) or state.hint
                if reference is not None:
                    ratios.append(ages[-1] - math.log(reference))
        moved = False
        old = state.duration_fit
        start = old or (state.durations.mean(), self._prior_spread)
        prior = self._prior_spread
        state.duration_fit = censored_normal_fit(state.durations, ages, start, prior)
        moved |= _moved(old, state.duration_fit)
        if len(state.ratios) >= self._min_samples:
            old = state.ratio_fit
            start = old or (state.ratios.mean(), self._prior_spread)
            state.ratio_fit = censored_normal_fit(state.ratios, ratios, start, prior)
            moved |= _moved(old, state.ratio_fit)
        return moved

    def distribution(self, model: str, hint: float | None = None) -> tuple[float, float] | None:
        """``(mu, sigma)`` of ``ln T`` for a job of ``model`` with server estimate ``hint``.

        ``None`` when nothing is known. See the module documentation for the sources.
        """
        state = self._models.get(model)
        reference = _valid_seconds(hint)
        if state is not None:
            if reference is None:
                reference = state.hint
            if reference is not None and state.ratio_fit is not None:
                mean, sigma = state.ratio_fit
                return math.log(reference) + mean, sigma
            if state.duration_fit is not None:
                return state.duration_fit
        if reference is not None:
            mu, sigma = self.prior_ratio()
            return math.log(reference) + mu, sigma
        return None

    def belief(self, model: str, hint: float | None = None) -> RunTimeBelief | None:
        """The run-time belief for a job of ``model`` (shared between equal fits)."""
        fit = self.distribution(model, hint)
        if fit is None:
            return None
        belief = self._beliefs.get(fit)
        if belief is None:
            if len(self._beliefs) > 4096:
                self._beliefs.clear()  # per-job hints could make this grow without bound
            belief = self._beliefs[fit] = RunTimeBelief(*fit)
        return belief

    def prior_ratio(self) -> tuple[float, float]:
        """``(mu, sigma)`` of ``ln(T / estimate)`` while only the server's estimate is known
        (the estimate read as a P80)."""
        sigma = self._prior_spread
        return -sigma * _Z80, sigma

    def knows(self, model: str) -> bool:
        """Whether anything (an estimate or durations) is known about ``model``."""
        return self.distribution(model) is not None

    def model_stats(self, model: str) -> ModelDurationStats:
        """A frozen snapshot of what is known about ``model``."""
        state = self._models.get(model)
        if state is None:
            return ModelDurationStats(model, 0, None, None, 0, None, None, None)
        fit, ratio_fit = state.duration_fit, state.ratio_fit
        return ModelDurationStats(
            model=model,
            samples=len(state.durations),
            median=math.exp(fit[0]) if fit else None,
            sigma=fit[1] if fit else None,
            ratio_samples=len(state.ratios),
            ratio_median=math.exp(ratio_fit[0]) if ratio_fit else None,
            ratio_sigma=ratio_fit[1] if ratio_fit else None,
            hint=state.hint,
        )


def _moved(old: tuple[float, float] | None, new: tuple[float, float]) -> bool:
    """Whether a fit changed enough for waiting jobs' plans to be redone."""
    if old is None:
        return True
    return abs(new[0] - old[0]) > 0.02 or abs(new[1] - old[1]) > 0.1 * old[1]
