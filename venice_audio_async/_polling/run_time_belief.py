"""What a job's run time is believed to be, and what a poll of it is worth now.

A job's run time ``T`` is believed lognormal, ``ln T ~ Normal(mu, sigma)`` (see
:mod:`._polling.estimator` for where ``mu`` and ``sigma`` come from). This module holds
the maths the poll policy needs from that belief, all in closed form or from small cached tables:

* ``S(t) = P(T > t)`` and ``Q(t) = integral_0^t S`` (closed form for the lognormal);
* the **worth** of polling a job now: the delay it has accrued in expectation since its last
  poll, ``E[(e - T)+ | T > s]`` for a job aged ``e`` now and ``s`` at its last poll, which is
  ``(e - s) - (Q(e) - Q(s)) / S(s)``: increasing and convex in ``e``, so the age at which it
  reaches a price is found by Newton's method from the right;
* ``J(t) = integral_0^t sqrt(f S / 2)``: in the fluid limit the best gap between polls at
  price ``p`` is ``sqrt(2 p / h)`` (``h`` the hazard rate), so a job still running at ``s``
  costs ``(J(e + x) - J(e)) / (S(s) sqrt(p))`` polls over the next ``x`` seconds. The policy
  sums this over jobs to price the window (docs/polling.md).

``J`` has no closed form. In z-space (``t = exp(mu + sigma z)``) it is
``sqrt(sigma / 2) exp(mu / 2) G_sigma(z)`` with
``G_sigma(z) = integral_{-inf}^z exp(sigma w / 2) sqrt(phi(w) Phi_c(w)) dw``, which depends on
``sigma`` alone: one table per ``sigma`` rounded to 0.01, shared by every model.
"""

from __future__ import annotations

import array
import functools
import math
from statistics import NormalDist

__all__ = ["RunTimeBelief"]

_SQRT2 = math.sqrt(2.0)
_NORMAL = NormalDist()
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: z-grid of the J tables: the integrand is negligible outside it.
_Z_LOW, _Z_HIGH, _Z_STEP = -8.0, 9.0, 0.05
#: Below this survival probability the exact worth formula loses its digits; the residual
#: run time is then taken to be exponential with the hazard rate at ``s``.
_TINY_SURVIVAL = 1e-9
_NEWTON_STEPS = 40
_MAX_EXPONENT = 50.0  # a Newton step never multiplies the gap by more than e^50
_NEWTON_TOLERANCE = 1e-4  # seconds
_LOG_TOLERANCE = 1e-4  # relative error in worth


def _survival_z(z: float) -> float:
    return 0.5 * math.erfc(z / _SQRT2)


def _phi(z: float) -> float:
    return _INV_SQRT_2PI * math.exp(-0.5 * z * z)


_GRID_POINTS = round((_Z_HIGH - _Z_LOW) / _Z_STEP) + 1


@functools.lru_cache(maxsize=128)
def _g_table(sigma: float) -> array.array[float]:
    """Cumulative ``G_sigma`` on the z-grid (trapezoid rule); a flat array of doubles
    (2.7 KB), since the tables live for the whole process."""
    values = [
        math.exp(0.5 * sigma * z) * math.sqrt(_phi(z) * _survival_z(z))
        for z in (_Z_LOW + i * _Z_STEP for i in range(_GRID_POINTS))
    ]
    cumulative = array.array("d", [0.0])
    for i in range(1, _GRID_POINTS):
        cumulative.append(cumulative[-1] + 0.5 * _Z_STEP * (values[i - 1] + values[i]))
    return cumulative


class RunTimeBelief:
    """A lognormal belief about one job's run time, with the quantities polling needs.

    Internal. Immutable once built; cheap to share between every job of a model.
    """

    __slots__ = ("_arrivals", "_g", "_j_scale", "mean", "mu", "sigma")

    def __init__(self, mu: float, sigma: float) -> None:
        if not (math.isfinite(mu) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"need a finite mu and sigma > 0, got {mu!r}, {sigma!r}")
        self.mu = mu
        self.sigma = sigma
        self.mean = math.exp(mu + 0.5 * sigma * sigma)
        self._g = _g_table(round(max(sigma, 0.01), 2))
        self._j_scale = math.sqrt(sigma / 2.0) * math.exp(mu / 2.0)
        self._arrivals: dict[float, float] = {}

    def __repr__(self) -> str:
        return f"RunTimeBelief(mu={self.mu:.4f}, sigma={self.sigma:.4f})"

    def _z(self, t: float) -> float:
        return (math.log(t) - self.mu) / self.sigma

    def survival(self, t: float) -> float:
        """``P(T > t)``."""
        return 1.0 if t <= 0 else _survival_z(self._z(t))

    def quantile(self, q: float) -> float:
        """The ``q``-quantile of ``T`` (``0 < q < 1``)."""
        return math.exp(self.mu + self.sigma * _NORMAL.inv_cdf(q))

    def integrated_survival(self, t: float) -> float:
        """``Q(t) = integral_0^t S(u) du = E[min(T, t)]``."""
        if t <= 0:
            return 0.0
        z = self._z(t)
        return t * _survival_z(z) + self.mean * (1.0 - _survival_z(z - self.sigma))

    def hazard(self, t: float) -> float:
        """The hazard rate ``f(t) / S(t)`` (Mills ratio in the far tail)."""
        if t <= 0:
            return 0.0
        z = self._z(t)
        tail = _survival_z(z)
        if tail > _TINY_SURVIVAL:
            return _phi(z) / (self.sigma * t * tail)
        # phi(z) / Phi_c(z) ~ z + 1/z for large z.
        return (z + 1.0 / z) / (self.sigma * t)

    def worth(self, age: float, last_poll_age: float) -> float:
        """Expected delay accrued since the last poll: ``E[(age - T)+ | T > last_poll_age]``."""
        s = max(0.0, last_poll_age)
        if age <= s:
            return 0.0
        tail = self.survival(s)
        if tail > _TINY_SURVIVAL:
            gained = self.integrated_survival(age) - self.integrated_survival(s)
            return max(0.0, (age - s) - gained / tail)
        rate = self.hazard(s)
        gap = age - s
        return gap - (-math.expm1(-rate * gap)) / rate

    def age_worth(self, last_poll_age: float, price: float) -> float:
        """The age at which a poll of a job last seen running at ``last_poll_age`` is worth
        ``price`` seconds of delay (worth is convex and increasing: Newton from the right)."""
        s = max(0.0, last_poll_age)
        tail = self.survival(s)
        if tail <= _TINY_SURVIVAL:
            rate = self.hazard(s)
            # Newton on d - (1 - exp(-rate d)) / rate = price, from d = price + 1/rate.
            d = price + 1.0 / rate
            for _ in range(_NEWTON_STEPS):
                value = d + math.expm1(-rate * d) / rate - price
                slope = -math.expm1(-rate * d)
                step = value / slope if slope > 0 else 0.0
                d -= step
                if step < _NEWTON_TOLERANCE:
                    break
            return s + max(d, 0.0)
        # worth(e) >= e - E[T | T > s] (Jensen), so the root lies below E[T | T > s] + price.
        # Newton on ln(worth) against ln(gap): its slope runs from 2 (short gaps, worth
        # ~ h gap^2 / 2) to 1 (long ones, worth ~ gap - mean residual), so it is nearly
        # straight and a few steps do; a bracket keeps every step safe.
        q_s = self.integrated_survival(s)
        residual = (self.mean - q_s) / tail
        low, high = 0.0, max(residual, 0.0) + price
        gap = high
        target = math.log(price)
        mu, sigma, mean = self.mu, self.sigma, self.mean
        for _ in range(_NEWTON_STEPS):
            age = s + gap
            z = (math.log(age) - mu) / sigma
            survival = _survival_z(z)
            q_e = age * survival + mean * (1.0 - _survival_z(z - sigma))
            value = gap - (q_e - q_s) / tail  # worth(age, s), sharing S(age) with the slope
            if value <= 0.0:
                low = gap
                gap = 0.5 * (low + high)
                continue
            error = math.log(value) - target
            if abs(error) < _LOG_TOLERANCE:
                break
            if error > 0:
                high = gap
            else:
                low = gap
            slope = 1.0 - survival / tail  # d worth / d gap
            candidate = 0.0
            if slope > 0:
                # A tiny slope (a hazard near zero: a huge median) would overflow the step;
                # capped, such a step leaves the bracket and is bisected instead.
                candidate = gap * math.exp(min(-error * value / (gap * slope), _MAX_EXPONENT))
            gap = candidate if low < candidate < high else 0.5 * (low + high)
        return s + gap

    def fluid_polls(self, t: float) -> float:
        """``J(t) = integral_0^t sqrt(f S / 2)``: polls up to age ``t`` at price 1."""
        if t <= 0:
            return 0.0
        cumulative = self._g
        z = self._z(t)
        if z <= _Z_LOW:
            return 0.0
        position = (z - _Z_LOW) / _Z_STEP
        i = int(position)
        if i >= _GRID_POINTS - 1:
            return self._j_scale * cumulative[-1]
        frac = position - i
        g = cumulative[i] + frac * (cumulative[i + 1] - cumulative[i])
        return self._j_scale * g

    def fluid_polls_of_arrivals(self, horizon: float) -> float:
        """``IJ(x) = integral_0^x J(u) du``: polls a job arriving uniformly in the next
        ``horizon`` seconds costs at price 1, times ``horizon`` (Simpson, 16 panels)."""
        if horizon <= 0:
            return 0.0
        cache = self._arrivals
        cached = cache.get(horizon)
        if cached is not None:
            return cached
        panels = 16
        h = horizon / panels
        total = self.fluid_polls(0.0) + self.fluid_polls(horizon)
        for i in range(1, panels):
            total += (4 if i % 2 else 2) * self.fluid_polls(i * h)
        value = total * h / 3.0
        cache[horizon] = value
        return value
