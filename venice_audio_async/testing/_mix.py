"""A realistic, reproducible mix of job run times for the fake server.

Real generations do not all take the same time: each model has its own typical run time, and
runs spread around it (right-skewed: a few take much longer). :class:`JobMix` draws each job's
run time from a per-model lognormal, and reports the model's 80th percentile as
``average_execution_time``, the way Venice documents that field (a P80 estimate).

The draw depends only on the seed and the queue body, never on arrival order or on the
process, so the same list of requests gets the same run times in every run: benchmarks can
compare clients on identical work, and an "oracle" client can compute every finish time.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import attrs

from ._types import JobScript

__all__ = ["JobMix", "ModelTiming"]

#: z of the 80th percentile of a standard normal.
_Z80 = NormalDist().inv_cdf(0.8)


def _check_mean(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _check_sigma(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen
class ModelTiming:
    """Run times of one model: lognormal with this ``mean`` (virtual seconds) and ``sigma``.

    ``sigma`` is the standard deviation of ``ln T`` (0.15 is roughly a 15 % spread; 0 makes
    every run take exactly ``mean``).

    Raises:
        ValueError: a non-positive ``mean`` or a negative ``sigma``.
    """

    mean: float = attrs.field(validator=_check_mean)
    sigma: float = attrs.field(default=0.15, validator=_check_sigma)

    @property
    def mu(self) -> float:
        """Mean of ``ln T`` (so that ``E[T]`` is :attr:`mean`)."""
        return math.log(self.mean) - self.sigma * self.sigma / 2

    @property
    def p80(self) -> float:
        """The 80th percentile of the run time: what the server reports as its estimate."""
        return math.exp(self.mu + self.sigma * _Z80)

    def draw(self, rng: random.Random) -> float:
        """One run time."""
        return math.exp(self.mu + self.sigma * rng.gauss(0.0, 1.0))


class JobMix:
    """Job scripts with per-model lognormal run times; pass it as ``FakeServer(job_script=)``.

    Args:
        timings: run-time distribution per model id; other models follow ``default``.
        seed: changes every draw; the same seed and body always give the same run time.
        default: the script of jobs of models not in ``timings`` (``None``: ``JobScript()``).
        audio_size: bytes of the audio body of mixed jobs (``None``: the small default).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        timings: Mapping[str, ModelTiming],
        *,
        seed: int = 0,
        default: JobScript | None = None,
        audio_size: int | None = None,
    ) -> None:
        self.timings = dict(timings)
        self.seed = seed
        self.default = default if default is not None else JobScript()
        self.audio_size = audio_size
        JobScript(audio_size=audio_size)  # validates the size now, not at the first queue

    def __repr__(self) -> str:
        return f"JobMix({self.timings!r}, seed={self.seed!r})"

    def duration_for(self, body: Mapping[str, Any]) -> float:
        """The run time (virtual seconds) of a job queued with ``body``."""
        return self(body).duration

    def __call__(self, body: Mapping[str, Any]) -> JobScript:
        timing = self.timings.get(str(body.get("model")))
        if timing is None:
            return self.default
        key = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        rng = random.Random(f"{self.seed}\x00{key}")  # str seeds hash with SHA-512: stable
        return JobScript(
            duration=timing.draw(rng),
            average_execution_time=timing.p80,
            audio_size=self.audio_size,
        )
