"""When to poll a running job next: a lognormal model of each audio model's run time.

The model
---------
A job's run time ``T`` is taken to be lognormal: ``ln T ~ Normal(mu, sigma)``. Run times are
positive and right-skewed (a few jobs take much longer), which the lognormal captures with
two numbers that are cheap to fit: the mean and standard deviation of ``ln T``.

Where ``mu`` and ``sigma`` come from, best source first:

1. **Learned ratios to the server's estimate.** When a finished job's duration is observed
   together with the server's estimate ``h`` in force for it, ``ln(T / h)`` is logged. With
   ``min_samples`` of them, a job with estimate ``h`` gets ``mu = ln h + mean``,
   ``sigma = std``. This follows the server when its estimate differs from job to job (a
   240 s track versus a 30 s one) and learns how well calibrated the estimate is.
2. **Learned durations.** With ``min_samples`` observed durations (when 1 does not apply,
   e.g. at queue time, before the job's own estimate is known): ``mu``, ``sigma`` = mean
   and standard deviation of the logged ``ln T``. These override the server's estimate.
3. **The server's estimate alone.** ``average_execution_time`` is documented as a P80, so
   the prior puts the 80th percentile there: ``sigma = prior_spread`` and
   ``mu = ln h - sigma * z(0.8)`` (``z(0.8) = 0.8416``). With the default spread 0.35 the
   median is 0.745 h.
4. **Nothing** (a model never seen, no estimate yet): poll after ``first_poll`` to learn the
   server's estimate.

Samples sit in bounded windows (the last ``max_samples``) with running sums of the values
and their squares, so observing and deciding are O(1); the sums are rebuilt from the window
every ``max_samples`` evictions (amortised O(1)) so float drift cannot accumulate.

When to poll
------------
A job that has run ``e`` seconds and is still running is polled at the **conditional
q-quantile** of its run time: the ``t`` with ``P(T <= t | T > e) = q``. With ``S`` the
standard normal survival function and ``z_e = (ln e - mu) / sigma``::

    S(z_t) = (1 - q) * S(z_e)        t = exp(mu + sigma * z_t)        delay = t - e

For a fresh job (``e = 0``) this is the plain q-quantile of ``T``. After a miss it is the
q-quantile of what is left, which is short when the distribution is tight. Far in the tail
(``z_e > 30``, before ``S`` underflows) the Mills-ratio asymptote of the normal tail,
``P(Z > z + x | Z > z) ~ exp(-z x - x^2 / 2) * z / (z + x)``, gives ``z_t`` by solving a
quadratic twice (relative error about 1e-6 there).

``q`` follows the request budget: ``q = 0.5 + 0.4 * pressure``, from the median with tokens
to spare (detection sooner, more polls) to the 90th percentile when saturated (fewer polls
per job).

**Detection slack.** Polling exactly at the median means half the jobs are still running at
the first poll: at least 1.5 polls per job even when run times are perfectly predictable.
But the scheduler accepts about ``min_interval`` (one second) of detection delay anyway. So
the poll is nudged later, by at most ``detection_slack`` seconds, toward the conditional 95th
percentile: ``t = max(t_q, min(t_95, t_q + slack))``. For a tight distribution (spread below
a second or so) this catches nearly every job at the first poll, at the price of under a
second of delay; for a wide one it moves the poll by ``slack`` and changes little.

**Overruns back off.** The lognormal tail only grows the delay slowly, and a fitted model
with a small ``sigma`` would poll a job that overruns it (a longer track, a stuck job) every
``min_interval`` for as long as it runs. Past the model's 95th percentile ``p95`` the delay
is therefore at least ``overrun_backoff * (e - p95)``: polls then space out geometrically
(by ``1 + overrun_backoff`` per poll) until ``max_interval``.

Finally every delay is clamped to ``[min_interval, max_interval]``. Note that
``max_interval`` also caps the first poll: with the default 300 s, a ten-minute track is
polled at least twice (a safety net in case the server's estimate is badly wrong).

Trade-off in numbers (the simulation in ``tests/test_estimator.py``: 1000 jobs, server
estimate 60 s, one job queued every 1.5 s, learning as they finish, ``max_interval`` 300 s):

==============================  =========  ============  =========
run times                       polls/job  median delay  p90 delay
==============================  =========  ============  =========
match the estimate (2% spread)  1.30       1.2 s         2.5 s
same, pressure 1                1.06       2.1 s         3.9 s
same, ``max_interval`` 30 s     2.27       1.2 s         2.4 s
15% spread                      1.83       3.9 s         9.8 s
35% spread (the prior's)        1.96       7.6 s         16.8 s
35% spread, pressure 1          1.11       27.1 s        42.8 s
==============================  =========  ============  =========

"One poll per job, noticed within a second" is reachable only when run times are
predictable to about a second; with a spread of several seconds no schedule gets both, and
``pressure`` picks the side.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import NormalDist

import attrs

__all__ = [
    "DurationEstimator",
    "ModelDurationStats",
    "PollingBounds",
    "conditional_lognormal_quantile",
]

_NORMAL = NormalDist()
#: z of the 80th percentile: the server's ``average_execution_time`` is a P80.
_Z80 = _NORMAL.inv_cdf(0.8)
#: The "high" quantile used by the detection slack and the overrun back-off.
_Q_HIGH = 0.95
_Z_HIGH = _NORMAL.inv_cdf(_Q_HIGH)
#: Lower bound of a fitted sigma (identical samples would otherwise give 0).
_MIN_SIGMA = 1e-3
#: Beyond this z the normal survival function is replaced by its asymptote.
_TAIL_Z = 30.0
_SQRT2 = math.sqrt(2.0)
#: exp() overflows just above this.
_MAX_EXPONENT = 700.0


def _survival(z: float) -> float:
    """``P(Z > z)`` for a standard normal, accurate far into the upper tail."""
    return 0.5 * math.erfc(z / _SQRT2)


def conditional_lognormal_quantile(mu: float, sigma: float, elapsed: float, q: float) -> float:
    """The ``t`` with ``P(T <= t | T > elapsed) = q`` for ``ln T ~ Normal(mu, sigma)``.

    ``elapsed <= 0`` gives the plain q-quantile. Returns ``math.inf`` if ``t`` overflows.

    Raises:
        ValueError: ``sigma <= 0`` or ``q`` outside ``(0, 1)``.

    .. versionadded:: 0.1.0
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    if elapsed <= 0:
        z_t = _NORMAL.inv_cdf(q)
    else:
        z_e = (math.log(elapsed) - mu) / sigma
        if z_e > _TAIL_Z:
            # Mills ratio: P(Z > z + x | Z > z) ~ exp(-z x - x^2 / 2) * z / (z + x) = 1 - q.
            # Solve the quadratic without the last factor, then once more with it.
            target = -math.log1p(-q)
            x = 2.0 * target / (z_e + math.sqrt(z_e * z_e + 2.0 * target))
            target -= math.log1p(x / z_e)
            z_t = z_e + 2.0 * target / (z_e + math.sqrt(z_e * z_e + 2.0 * target))
        else:
            tail = (1.0 - q) * _survival(z_e)
            z_t = -_NORMAL.inv_cdf(tail)  # S(z_t) = tail
    exponent = mu + sigma * z_t
    if exponent > _MAX_EXPONENT:
        return math.inf
    return max(math.exp(exponent), elapsed)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class PollingBounds:
    """Limits on the delay between two polls of a job, in seconds.

    Args:
        min_interval: never poll a job sooner than this after the previous poll.
        max_interval: never wait longer than this (also caps the first poll).
        first_poll: delay of the first poll of a job of a model nothing is known about
            (the answer brings the server's estimate).

    Raises:
        ValueError: a non-positive value or ``min_interval > max_interval``.

    .. versionadded:: 0.1.0
    """

    min_interval: float = 1.0
    max_interval: float = 300.0
    first_poll: float = 1.0

    def __attrs_post_init__(self) -> None:
        _check_positive("min_interval", self.min_interval)
        _check_positive("max_interval", self.max_interval)
        _check_positive("first_poll", self.first_poll)
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

    ``median`` and ``sigma`` describe the fit to observed durations (``None`` before
    ``min_samples``); ``ratio_median`` is the learned median of duration / server estimate;
    ``hint`` the latest server estimate (P80, seconds).

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
    __slots__ = ("durations", "hint", "ratios")

    def __init__(self, max_samples: int) -> None:
        self.hint: float | None = None
        self.durations = _LogWindow(max_samples)
        self.ratios = _LogWindow(max_samples)


def _valid_seconds(value: float | None) -> float | None:
    if value is None or not (math.isfinite(value) and value > 0):
        return None
    return float(value)


class DurationEstimator:
    """Learns each model's run time and says when to poll a job next.

    See the module documentation for the maths. All methods are O(1).

    Args:
        bounds: limits on the delay between polls.
        prior_spread: ``sigma`` of ``ln T`` while only the server's estimate is known.
        min_samples: observations needed before fitted values replace the prior.
        max_samples: observations kept per model (the most recent).
        detection_slack: how much later than the q-quantile a poll may be moved to catch
            more jobs at once; ``None`` means ``bounds.min_interval``, 0 disables it.
        overrun_backoff: past the model's 95th percentile, the delay is at least this
            fraction of the overrun.

    Raises:
        ValueError: a non-positive spread or sample count, ``min_samples > max_samples``,
            or a negative slack or back-off.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        bounds: PollingBounds = PollingBounds(),
        prior_spread: float = 0.35,
        min_samples: int = 3,
        max_samples: int = 200,
        detection_slack: float | None = None,
        overrun_backoff: float = 0.5,
    ) -> None:
        _check_positive("prior_spread", prior_spread)
        if min_samples < 1 or max_samples < min_samples:
            raise ValueError(
                f"need 1 <= min_samples <= max_samples, got {min_samples}, {max_samples}"
            )
        slack = bounds.min_interval if detection_slack is None else detection_slack
        if not (math.isfinite(slack) and slack >= 0):
            raise ValueError(f"detection_slack must be >= 0, got {detection_slack!r}")
        if not (math.isfinite(overrun_backoff) and overrun_backoff >= 0):
            raise ValueError(f"overrun_backoff must be >= 0, got {overrun_backoff!r}")
        self.bounds = bounds
        self._prior_spread = float(prior_spread)
        self._min_samples = min_samples
        self._max_samples = max_samples
        self._slack = float(slack)
        self._backoff = float(overrun_backoff)
        self._models: dict[str, _ModelState] = {}

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
        """Learn a finished job's run time (seconds, counted as ``elapsed`` is).

        ``hint`` is the server's estimate for that job (default: the model's latest
        estimate); with one, the ratio duration / estimate is learned too. Non-positive or
        non-finite durations are ignored.
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

    def _sigma(self, window: _LogWindow) -> float:
        std = window.std()
        return self._prior_spread if std is None else max(std, _MIN_SIGMA)

    def distribution(self, model: str, hint: float | None = None) -> tuple[float, float] | None:
        """``(mu, sigma)`` of ``ln T`` for a job of ``model`` with server estimate ``hint``.

        ``None`` when nothing is known. See the module documentation for the sources.
        """
        state = self._models.get(model)
        reference = _valid_seconds(hint)
        if state is not None:
            enough = self._min_samples
            if reference is not None and len(state.ratios) >= enough:
                return math.log(reference) + state.ratios.mean(), self._sigma(state.ratios)
            if len(state.durations) >= enough:
                return state.durations.mean(), self._sigma(state.durations)
            if reference is None and state.hint is not None:
                reference = state.hint
                if len(state.ratios) >= enough:
                    return math.log(reference) + state.ratios.mean(), self._sigma(state.ratios)
        if reference is not None:
            sigma = self._prior_spread
            return math.log(reference) - sigma * _Z80, sigma
        return None

    def knows(self, model: str) -> bool:
        """Whether anything (an estimate or durations) is known about ``model``.

        ``False`` means :meth:`next_poll_delay` answers with the blind ``first_poll``.
        """
        return self.distribution(model) is not None

    def next_poll_delay(
        self, model: str, elapsed: float, *, pressure: float = 0.0, hint: float | None = None
    ) -> float:
        """Seconds from now until a job of ``model``, running for ``elapsed`` s, is polled.

        ``pressure`` in ``[0, 1]`` (clipped) raises the target quantile from 0.5 to 0.9;
        ``hint`` is the server's latest estimate for this job (P80, seconds), defaulting to
        the model's. With nothing known: ``bounds.first_poll`` for a fresh job, else
        ``overrun_backoff * elapsed`` (clamped), so unknown jobs still back off.
        """
        bounds = self.bounds
        if not math.isfinite(elapsed) or elapsed < 0:
            elapsed = 0.0
        if not pressure >= 0:  # also NaN
            pressure = 0.0
        q = 0.5 + 0.4 * min(pressure, 1.0)
        fit = self.distribution(model, hint)
        if fit is None:
            if elapsed == 0:
                return bounds.first_poll
            return bounds.clamp(max(bounds.first_poll, self._backoff * elapsed))
        mu, sigma = fit
        target = conditional_lognormal_quantile(mu, sigma, elapsed, q)
        if self._slack > 0:
            high = conditional_lognormal_quantile(mu, sigma, elapsed, max(q, _Q_HIGH))
            target = max(target, min(high, target + self._slack))
        delay = target - elapsed
        high_mark = math.exp(min(_MAX_EXPONENT, mu + sigma * _Z_HIGH))
        if elapsed > high_mark:
            delay = max(delay, self._backoff * (elapsed - high_mark))
        return bounds.clamp(delay)

    def model_stats(self, model: str) -> ModelDurationStats:
        """A frozen snapshot of what is known about ``model``."""
        state = self._models.get(model)
        if state is None:
            return ModelDurationStats(model, 0, None, None, 0, None, None, None)
        fitted = len(state.durations) >= self._min_samples
        ratio_fitted = len(state.ratios) >= self._min_samples
        return ModelDurationStats(
            model=model,
            samples=len(state.durations),
            median=math.exp(state.durations.mean()) if fitted else None,
            sigma=self._sigma(state.durations) if fitted else None,
            ratio_samples=len(state.ratios),
            ratio_median=math.exp(state.ratios.mean()) if ratio_fitted else None,
            ratio_sigma=self._sigma(state.ratios) if ratio_fitted else None,
            hint=state.hint,
        )
