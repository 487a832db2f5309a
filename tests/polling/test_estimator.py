"""The run-time belief: learning each model's timing, and the maths the poll policy uses."""

from __future__ import annotations

import math
import random
import statistics
import time

import pytest

from venice_audio_async._polling.estimator import (
    DurationEstimator,
    ModelDurationStats,
    PollingBounds,
)
from venice_audio_async._polling.run_time_belief import RunTimeBelief

Z80 = statistics.NormalDist().inv_cdf(0.8)


def test_no_information_means_no_belief() -> None:
    """A model never seen, without a hint, has no belief until its estimate arrives."""
    estimator = DurationEstimator()
    assert estimator.belief("new-model") is None
    assert not estimator.knows("new-model")
    estimator.observe_hint("new-model", 20.0)
    assert estimator.knows("new-model")


def test_p80_hint_sets_the_prior() -> None:
    """With only the server's P80 hint, the belief puts its 80th percentile there."""
    estimator = DurationEstimator()
    estimator.observe_hint("m", 60.0)
    belief = estimator.belief("m")
    assert belief is not None
    assert belief.sigma == pytest.approx(0.35)
    assert belief.quantile(0.8) == pytest.approx(60.0)
    per_job = estimator.belief("m", hint=30.0)
    assert per_job is not None
    assert per_job.quantile(0.8) == pytest.approx(30.0)


def test_too_few_finished_jobs_keep_the_prior() -> None:
    """Nine finished jobs do not replace the prior; the tenth does."""
    estimator = DurationEstimator()
    estimator.observe_hint("m", 60.0)
    for _ in range(9):
        estimator.observe_duration("m", 20.0)
    assert not estimator.refit("m")
    assert estimator.distribution("m") == pytest.approx((math.log(60.0) - 0.35 * Z80, 0.35))
    estimator.observe_duration("m", 20.0)
    assert estimator.refit("m")
    mu, _ = estimator.distribution("m") or (0.0, 0.0)
    assert math.exp(mu) == pytest.approx(20.0, rel=0.01)


def test_running_jobs_are_right_censored() -> None:
    """The first half of a batch to finish is biased short; counting the jobs still running
    as censored puts the fitted median near the truth, the finished ones alone do not."""
    rng = random.Random(4)
    durations = sorted(30.0 * math.exp(rng.gauss(0, 0.25)) for _ in range(40))
    finished, running = durations[:20], durations[20:]
    now = finished[-1]  # the moment the 20th job finished
    naive = DurationEstimator()
    censored = DurationEstimator()
    for estimator in (naive, censored):
        estimator.observe_hint("m", 36.0)
        for seconds in finished:
            estimator.observe_duration("m", seconds)
    naive.refit("m")
    censored.refit("m", [(now, None)] * len(running))
    naive_median = naive.model_stats("m").median
    censored_median = censored.model_stats("m").median
    assert naive_median is not None
    assert censored_median is not None
    assert naive_median < 0.85 * 30.0
    assert censored_median == pytest.approx(30.0, rel=0.1)


def test_fitted_spread_is_shrunk_towards_the_prior_and_clamped() -> None:
    """Identical durations do not make the belief certain: sigma stays within [0.05, 0.6]
    and near the prior while few jobs finished."""
    estimator = DurationEstimator()
    for _ in range(10):
        estimator.observe_duration("m", 42.0)
    estimator.refit("m")
    few = estimator.model_stats("m").sigma
    for _ in range(190):
        estimator.observe_duration("m", 42.0)
    estimator.refit("m")
    many = estimator.model_stats("m").sigma
    assert few is not None
    assert many is not None
    assert 0.05 <= many < few < 0.35
    wild = DurationEstimator()
    for seconds in (1.0, 1000.0) * 10:
        wild.observe_duration("m", seconds)
    wild.refit("m")
    assert wild.model_stats("m").sigma == pytest.approx(0.6)


def test_ratio_to_per_job_hint_is_learned() -> None:
    """Jobs taking half their own estimate teach the estimator that ratio, per job."""
    estimator = DurationEstimator()
    for hint in (20.0, 40.0, 80.0, 160.0) * 5:
        estimator.observe_duration("m", hint / 2, hint=hint)
    estimator.refit("m")
    for hint in (10.0, 300.0):
        mu, _ = estimator.distribution("m", hint=hint) or (0.0, 0.0)
        assert math.exp(mu) == pytest.approx(hint / 2, rel=0.01)


def test_bad_observations_are_ignored() -> None:
    """Non-positive or non-finite hints and durations change nothing."""
    estimator = DurationEstimator()
    for value in (None, 0.0, -5.0, math.nan, math.inf):
        estimator.observe_hint("m", value)
        if value is not None:
            estimator.observe_duration("m", value)
    assert estimator.model_stats("m") == ModelDurationStats("m", 0, None, None, 0, None, None, None)
    assert estimator.belief("m", hint=-1.0) is None


def test_invalid_configuration_is_refused() -> None:
    """Nonsense bounds and options raise ValueError naming the setting."""
    with pytest.raises(ValueError, match="min_interval"):
        PollingBounds(min_interval=10.0, max_interval=5.0)
    with pytest.raises(ValueError, match="first_poll"):
        PollingBounds(first_poll=0.0)
    with pytest.raises(ValueError, match="delay_per_poll"):
        PollingBounds(delay_per_poll=math.nan)
    with pytest.raises(ValueError, match="retrieve_share"):
        PollingBounds(retrieve_share=1.5)
    with pytest.raises(ValueError, match="retrieve_share"):
        PollingBounds(retrieve_share=0.0)
    with pytest.raises(ValueError, match="prior_spread"):
        DurationEstimator(prior_spread=0.0)
    with pytest.raises(ValueError, match="min_samples"):
        DurationEstimator(min_samples=10, max_samples=5)


def test_100k_observations_are_constant_time_and_drift_free() -> None:
    """100k observations and refits run quickly; the window's sums match a fresh fit."""
    rng = random.Random(3)
    estimator = DurationEstimator(max_samples=200)
    durations = [60.0 * math.exp(rng.gauss(0, 0.2)) for _ in range(100_000)]
    started = time.perf_counter()
    for seconds in durations:
        estimator.observe_duration("m", seconds, hint=60.0)
    estimator.refit("m")
    assert time.perf_counter() - started < 5.0
    stats = estimator.model_stats("m")
    assert stats.samples == 200
    window = [math.log(s) for s in durations[-200:]]
    assert stats.median == pytest.approx(math.exp(statistics.fmean(window)), rel=1e-9)


# --------------------------------------------------------------------------- belief maths


BELIEF = RunTimeBelief(math.log(30.0) - 0.5 * 0.25**2, 0.25)


def test_worth_is_the_expected_delay_since_the_last_poll() -> None:
    """worth(e, s) = E[(e - T)+ | T > s], checked by Monte Carlo."""
    rng = random.Random(1)
    samples = [math.exp(BELIEF.mu + BELIEF.sigma * rng.gauss(0, 1)) for _ in range(200_000)]
    for age, seen in ((35.0, 0.0), (35.0, 30.0), (60.0, 45.0)):
        alive = [t for t in samples if t > seen]
        expected = sum(max(0.0, age - t) for t in alive) / len(alive)
        assert BELIEF.worth(age, seen) == pytest.approx(expected, rel=0.03, abs=1e-3)


def test_age_worth_inverts_worth_even_far_in_the_tail() -> None:
    """The age at which a poll is worth the price gives back that price."""
    for seen in (0.0, 20.0, 30.0, 60.0, 200.0):
        for price in (0.01, 0.1, 1.0, 10.0):
            age = BELIEF.age_worth(seen, price)
            assert age >= seen
            assert BELIEF.worth(age, seen) == pytest.approx(price, rel=1e-3)


def test_fluid_polls_match_the_integral() -> None:
    """J(t) from the table matches a direct integral of sqrt(f S / 2)."""

    def density(t: float) -> float:
        z = (math.log(t) - BELIEF.mu) / BELIEF.sigma
        return math.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * BELIEF.sigma * t)

    step, total, t = 0.001, 0.0, 0.0005
    for limit in (20.0, 30.0, 200.0):
        while t < limit:
            total += math.sqrt(density(t) * BELIEF.survival(t) / 2) * step
            t += step
        assert BELIEF.fluid_polls(limit) == pytest.approx(total, rel=2e-3)
    assert BELIEF.integrated_survival(1e6) == pytest.approx(BELIEF.mean, rel=1e-9)


def test_running_jobs_are_censored_where_a_poll_last_saw_them() -> None:
    """A running job is known to run only up to the age its last poll saw: a fit that
    censored it at its age now would claim more than is known and be dragged long."""
    from venice_audio_async._core.models import Job
    from venice_audio_async._polling.model_fits import ModelFits
    from venice_audio_async._polling.tracked import TrackedJob

    fits = ModelFits(DurationEstimator())
    fits.estimator.observe_hint("m", 24.0)
    for seconds in (18.0, 19.0, 20.0, 20.5, 21.0, 21.5, 22.0, 19.5, 20.0):
        fits.estimator.observe_duration("m", seconds)
    # Unpolled for long (a tight budget): last seen running at 15 s, started long ago.
    running = [
        TrackedJob(
            job=Job(model="m", queue_id=f"q{i}"),
            sink_factory=lambda: None,  # type: ignore[arg-type, return-value]
            tracked_at=0.0,
            started=0.0,
            deadline_at=None,
            prompt=False,
            seen_running_at_age=15.0,
        )
        for i in range(9)
    ]
    tenth = TrackedJob(
        job=Job(model="m", queue_id="done"),
        sink_factory=lambda: None,  # type: ignore[arg-type, return-value]
        tracked_at=0.0,
        started=0.0,
        deadline_at=None,
        prompt=False,
    )
    fits.observe_finished(tenth, 20.0, running)
    median = fits.estimator.model_stats("m").median
    assert median is not None
    assert median == pytest.approx(20.0, rel=0.1)


def test_due_age_is_found_for_a_belief_with_a_huge_median() -> None:
    """A server estimate of months (a hazard near zero at the job's age) gives a due age,
    not an OverflowError that would end the scheduler's worker."""
    belief = RunTimeBelief(math.log(6.19e6), 1.41)
    seen, price = 116.9, 0.00139
    due = belief.age_worth(seen, price)
    assert math.isfinite(due)
    assert due > seen
    assert belief.worth(due, seen) == pytest.approx(price, rel=0.01)
