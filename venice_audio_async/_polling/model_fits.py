"""What the scheduler has learned of each model's run times, and how far a lesson reaches.

Each tracked job is priced with a :class:`~._polling.run_time_belief.RunTimeBelief` from the
:class:`~._polling.estimator.DurationEstimator`. When a model's fit moves (a finished job, the first
estimate of an unknown model) the jobs' beliefs are refreshed lazily (a version number per
model) and jobs whose poll may now be due sooner must be re-keyed. How many depends on the
size of the move (:class:`RekeyScope`):

* a small move can only bring due times a little earlier, so only the jobs keyed within
  the scheduler's sweep horizon need a look: those keyed further out were keyed with
  enough slack (see ``Scheduler._schedule``) to absorb it;
* a large move (the fit's median or 1st percentile fell by more than :data:`LARGE_DROP`
  in log terms since the last full re-key, or a model's first estimate) re-keys every
  running job of the model. Learning settles quickly, so this happens a few times per
  model, not per completion.

Only one job of a model nothing is known about polls for the server's estimate (a
*probe*); the others wait for its answer.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import Counter
from collections.abc import Iterable

from .estimator import DurationEstimator
from .run_time_belief import RunTimeBelief
from .tracked import TrackedJob

__all__ = ["ModelFits", "RekeyScope"]

#: A fall of the fit's log-median or log-P1 by more than this re-keys every job of the
#: model; jobs keyed beyond the sweep horizon are keyed early enough to absorb less.
LARGE_DROP = 0.1
_CENSORED = 64  # running jobs (oldest first) a refit reads as right-censored
_Z01 = 2.326  # standard normal quantile of 0.99: P1 = exp(mu - 2.326 sigma)
_Location = tuple[str, float, float]  # (which fit, log-median, log-P1)


class RekeyScope(enum.Enum):
    """Which jobs a change of a model's fit may make due sooner."""

    NONE = "none"
    NEAR = "near"  # those keyed within the sweep horizon
    ALL = "all"  # every running job of the model


class ModelFits:
    """Beliefs per job, fit versions per model, probes of unknown models. Internal."""

    def __init__(self, estimator: DurationEstimator) -> None:
        self.estimator = estimator
        self._versions: Counter[str] = Counter()  # bumped when a model's fit moves
        self._probing: set[str] = set()
        # The highest (log-median, log-P1) seen since the model's last full re-key, and
        # which fit it was read from: keys beyond the horizon were computed with a fit at
        # most this late.
        self._reference: dict[str, _Location] = {}

    def version(self, model: str) -> int:
        return self._versions.get(model, 0)  # not [model]: Counter's __missing__ is a call

    @property
    def probing(self) -> bool:
        """Whether some model's jobs wait for a probe's answer."""
        return bool(self._probing)

    def belief_of(self, tracked: TrackedJob) -> RunTimeBelief | None:
        """``tracked``'s belief, brought up to date with its model's fit and its hint."""
        model = tracked.job.model
        version = self.version(model)
        if tracked.belief_version != version or tracked.belief is None:
            tracked.belief = self.estimator.belief(model, hint=tracked.hint)
            tracked.belief_version = version
        return tracked.belief

    def probe(self, model: str) -> bool:
        """A job of ``model`` (nothing known of it) is tracked: whether it should ask for
        the server's estimate (False: another job already does; wait for it)."""
        if model in self._probing:
            return False
        self._probing.add(model)
        return True

    def end_probe(self, model: str) -> RekeyScope:
        """A job of ``model`` answered (or ended): the jobs waiting on a probe go now."""
        if model not in self._probing:
            return RekeyScope.NONE
        self._probing.discard(model)
        self._versions[model] += 1
        self._reference.pop(model, None)
        self._reference_of(model)
        return RekeyScope.ALL

    def observe_hint(self, tracked: TrackedJob, average_execution_time: float | None) -> None:
        """The server's estimate for a running job (``average_execution_time``)."""
        if average_execution_time is None:
            return
        self.estimator.observe_hint(tracked.job.model, average_execution_time)
        if average_execution_time != tracked.hint:
            tracked.hint = average_execution_time
            tracked.belief = None

    def observe_finished(
        self, tracked: TrackedJob, duration: float, running: Iterable[TrackedJob]
    ) -> RekeyScope:
        """A job ran ``duration`` seconds; refit its model from its finished jobs and the
        oldest ``running`` ones (right-censored at the age a poll last saw them running)."""
        return self.observe_run(tracked.job.model, duration, tracked.hint, running)

    def observe_run(
        self, model: str, duration: float, hint: float | None, running: Iterable[TrackedJob]
    ) -> RekeyScope:
        """A job of ``model`` (this process's, or another's sharing the budget) ran
        ``duration`` seconds with the server's estimate ``hint``: refit as
        :meth:`observe_finished` does."""
        self.estimator.observe_duration(model, duration, hint=hint)
        ref_kind, ref_median, ref_p01 = self._reference_of(model)  # read before the refit
        # Censored where a poll last saw each running: its age now would claim it still
        # runs, and a job unpolled for a while may have finished (a fit biased long).
        ages = [(t.seen_running_at_age, t.hint) for t in itertools.islice(running, _CENSORED)]
        if not self.estimator.refit(model, ages):
            return RekeyScope.NONE
        self._versions[model] += 1
        kind, median, p01 = self._location(model)
        if kind != ref_kind or median < ref_median - LARGE_DROP or p01 < ref_p01 - LARGE_DROP:
            self._reference[model] = (kind, median, p01)
            return RekeyScope.ALL
        self._reference[model] = (kind, max(median, ref_median), max(p01, ref_p01))
        return RekeyScope.NEAR

    def _location(self, model: str) -> _Location:
        """Where the fit every job's belief derives from sits (log-median, log-P1).

        Read from the fit itself, not from a job's belief: beliefs differ by the server's
        per-job estimate, but a move of the fit moves them all alike (in log terms)."""
        stats = self.estimator.model_stats(model)
        if stats.ratio_median is not None and stats.ratio_sigma is not None:
            kind, median, sigma = "ratio", stats.ratio_median, stats.ratio_sigma
        elif stats.median is not None and stats.sigma is not None:
            kind, median, sigma = "duration", stats.median, stats.sigma
        elif stats.hint is not None:
            # Only the server's estimate so far: beliefs are its prior, a ratio fit too.
            mu, sigma = self.estimator.prior_ratio()
            return "ratio", mu, mu - _Z01 * sigma
        else:
            return "none", math.inf, math.inf
        mu = math.log(median)
        return kind, mu, mu - _Z01 * sigma

    def _reference_of(self, model: str) -> _Location:
        reference = self._reference.get(model)
        if reference is None:
            reference = self._reference[model] = self._location(model)
        return reference
