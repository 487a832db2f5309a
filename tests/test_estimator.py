"""The duration estimator: when to poll a running job next."""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time

import pytest

from venice_audio_async._estimator import (
    DurationEstimator,
    ModelDurationStats,
    PollingBounds,
    conditional_lognormal_quantile,
)

Z80 = statistics.NormalDist().inv_cdf(0.8)
WIDE = PollingBounds(max_interval=300.0)


def learned(durations: list[float], **kwargs: object) -> DurationEstimator:
    """An estimator that has seen ``durations`` for model "m"."""
    estimator = DurationEstimator(**kwargs)  # type: ignore[arg-type]
    for seconds in durations:
        estimator.observe_duration("m", seconds)
    return estimator


def test_no_information_gives_first_poll() -> None:
    """A model never seen, without a hint, is polled after first_poll."""
    estimator = DurationEstimator(bounds=PollingBounds(first_poll=1.5))
    assert estimator.next_poll_delay("new-model", 0.0) == 1.5
    assert estimator.distribution("new-model") is None
    assert not estimator.knows("new-model")
    estimator.observe_hint("new-model", 20.0)
    assert estimator.knows("new-model")


def test_no_information_backs_off_with_elapsed() -> None:
    """Without any estimate a long-running job is still polled less and less often."""
    estimator = DurationEstimator()
    assert estimator.next_poll_delay("m", 4.0) == 2.0
    assert estimator.next_poll_delay("m", 1000.0) == 300.0


def test_p80_hint_first_delay_is_near_the_median() -> None:
    """With a P80 hint of 60 s the first poll comes about at the median, 44.7 s."""
    median = 60.0 * math.exp(-0.35 * Z80)
    estimator = DurationEstimator(bounds=WIDE)
    estimator.observe_hint("m", 60.0)
    delay = estimator.next_poll_delay("m", 0.0)
    assert median <= delay <= median + 1.0  # at most the detection slack later
    exact = DurationEstimator(bounds=WIDE, detection_slack=0.0)
    assert exact.next_poll_delay("m", 0.0, hint=60.0) == pytest.approx(median)


def test_per_call_hint_and_model_hint_agree() -> None:
    """A hint passed to next_poll_delay works like one recorded with observe_hint."""
    a = DurationEstimator(bounds=WIDE)
    a.observe_hint("m", 60.0)
    b = DurationEstimator(bounds=WIDE)
    assert a.next_poll_delay("m", 10.0) == b.next_poll_delay("m", 10.0, hint=60.0)


def test_default_max_interval_caps_the_first_poll() -> None:
    """With the default bounds the first poll is at most 300 s away, even for long jobs."""
    estimator = DurationEstimator()
    assert estimator.next_poll_delay("m", 0.0, hint=600.0) == 300.0
    assert estimator.next_poll_delay("m", 0.0, hint=60.0) < 60.0


def test_after_a_miss_a_tight_model_polls_again_soon() -> None:
    """When a well-known job is still running at its expected end, it is polled ~1 s later."""
    rng = random.Random(1)
    estimator = learned([60.0 * math.exp(rng.gauss(0, 0.005)) for _ in range(50)], bounds=WIDE)
    first = estimator.next_poll_delay("m", 0.0)
    assert 60.0 <= first <= 61.5
    assert estimator.next_poll_delay("m", first) == 1.0


def test_after_a_miss_under_the_prior_the_next_poll_is_sooner() -> None:
    """Under the wide prior, the delay after a miss is shorter than the first one."""
    estimator = DurationEstimator(bounds=WIDE)
    first = estimator.next_poll_delay("m", 0.0, hint=60.0)
    second = estimator.next_poll_delay("m", first, hint=60.0)
    assert 1.0 < second < first / 2


def test_learned_durations_override_the_hint() -> None:
    """Once min_samples durations are seen, they replace the server's P80 hint."""
    estimator = DurationEstimator(bounds=WIDE, min_samples=3, detection_slack=0.0)
    for seconds in (19.0, 20.0, 21.0):
        estimator.observe_duration("m", seconds)
    # the hint arrives later and says 60 s, but 20 s has been observed three times
    assert estimator.next_poll_delay("m", 0.0, hint=60.0) == pytest.approx(20.0, rel=0.01)


def test_too_few_samples_keep_the_hint() -> None:
    """Below min_samples the prior around the hint is used."""
    estimator = DurationEstimator(bounds=WIDE, min_samples=5, detection_slack=0.0)
    for seconds in (20.0, 20.0, 20.0, 20.0):
        estimator.observe_duration("m", seconds)
    assert estimator.next_poll_delay("m", 0.0, hint=60.0) == pytest.approx(
        60.0 * math.exp(-0.35 * Z80)
    )


def test_ratio_to_per_job_hint_is_learned() -> None:
    """Durations observed with their job's hint teach the hint's calibration."""
    estimator = DurationEstimator(bounds=WIDE, detection_slack=0.0)
    for hint in (20.0, 40.0, 80.0, 160.0):
        estimator.observe_duration("m", hint / 2, hint=hint)
    assert estimator.next_poll_delay("m", 0.0, hint=100.0) == pytest.approx(50.0)
    assert estimator.next_poll_delay("m", 0.0, hint=200.0) == pytest.approx(100.0)
    stats = estimator.model_stats("m")
    assert stats.ratio_median == pytest.approx(0.5)
    assert stats.ratio_samples == 4


def test_pressure_raises_the_delay() -> None:
    """Higher budget pressure moves the poll to a higher quantile (up to the 90th)."""
    estimator = DurationEstimator(bounds=WIDE, detection_slack=0.0)
    delays = [estimator.next_poll_delay("m", 0.0, hint=60.0, pressure=p) for p in (0, 0.5, 1)]
    assert delays[0] < delays[1] < delays[2]
    mu = math.log(60.0) - 0.35 * Z80
    p90 = math.exp(mu + 0.35 * statistics.NormalDist().inv_cdf(0.9))
    assert delays[2] == pytest.approx(p90)
    # out-of-range pressure is clipped
    assert estimator.next_poll_delay("m", 0.0, hint=60.0, pressure=7.0) == delays[2]
    assert estimator.next_poll_delay("m", 0.0, hint=60.0, pressure=-1.0) == delays[0]
    assert estimator.next_poll_delay("m", 0.0, hint=60.0, pressure=math.nan) == delays[0]


def test_delays_are_clamped_to_the_bounds() -> None:
    """Every delay lies in [min_interval, max_interval]."""
    bounds = PollingBounds(min_interval=2.0, max_interval=20.0)
    estimator = DurationEstimator(bounds=bounds)
    assert estimator.next_poll_delay("m", 0.0, hint=0.5) == 2.0
    assert estimator.next_poll_delay("m", 0.0, hint=3600.0) == 20.0
    for elapsed in (0.0, 0.3, 5.0, 50.0, 500.0, 5e5, 1e12):
        assert 2.0 <= estimator.next_poll_delay("m", elapsed, hint=60.0) <= 20.0


def test_long_running_jobs_back_off() -> None:
    """A job far past its model's estimate is polled less and less often, up to the cap."""
    rng = random.Random(2)
    estimator = learned([60.0 * math.exp(rng.gauss(0, 0.01)) for _ in range(50)], bounds=WIDE)
    delays = [estimator.next_poll_delay("m", e) for e in (62, 70, 100, 200, 1000)]
    assert delays == sorted(delays)
    assert delays[0] == 1.0
    assert delays[2] > 10.0
    assert delays[-1] == 300.0
    # under the wide prior the lognormal tail alone grows the delay, slowly
    prior = DurationEstimator(bounds=PollingBounds(max_interval=1e4), overrun_backoff=0.0)
    tail = [prior.next_poll_delay("m", e, hint=60.0) for e in (100, 200, 400, 1600)]
    assert tail == sorted(tail)
    assert tail[-1] < 100.0


def test_conditional_quantile_matches_its_definition() -> None:
    """P(T <= t | T > e) = q holds for the returned t, including deep in the tail."""
    mu, sigma = math.log(40.0), 0.3
    dist = statistics.NormalDist(mu, sigma)
    for elapsed in (0.0, 10.0, 40.0, 80.0, 150.0):
        for q in (0.5, 0.7, 0.9):
            t = conditional_lognormal_quantile(mu, sigma, elapsed, q)
            assert t >= elapsed
            f_e = dist.cdf(math.log(elapsed)) if elapsed > 0 else 0.0
            assert (dist.cdf(math.log(t)) - f_e) / (1 - f_e) == pytest.approx(q, abs=1e-6)
    # the asymptotic branch joins the exact one smoothly at z = 30
    just_below = math.exp(mu + sigma * (30 - 1e-9))
    just_above = math.exp(mu + sigma * (30 + 1e-9))
    for q in (0.5, 0.9):
        below = conditional_lognormal_quantile(mu, sigma, just_below, q) - just_below
        above = conditional_lognormal_quantile(mu, sigma, just_above, q) - just_above
        assert above == pytest.approx(below, rel=1e-5)
    assert conditional_lognormal_quantile(0.0, 1.0, 1e300, 0.9) > 1e300
    with pytest.raises(ValueError, match="sigma"):
        conditional_lognormal_quantile(0.0, 0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="q must"):
        conditional_lognormal_quantile(0.0, 1.0, 1.0, 1.0)


def test_bad_observations_are_ignored() -> None:
    """Non-positive or non-finite hints and durations change nothing; bad elapsed is 0."""
    estimator = DurationEstimator()
    for value in (None, 0.0, -5.0, math.nan, math.inf):
        estimator.observe_hint("m", value)
        if value is not None:
            estimator.observe_duration("m", value)
    assert estimator.model_stats("m") == ModelDurationStats("m", 0, None, None, 0, None, None, None)
    assert estimator.next_poll_delay("m", math.nan) == 1.0
    assert estimator.next_poll_delay("m", -3.0, hint=-1.0) == 1.0


def test_model_stats_snapshot() -> None:
    """model_stats reports the fitted median and spread and the latest hint."""
    estimator = DurationEstimator()
    assert estimator.model_stats("x").samples == 0
    estimator.observe_hint("m", 50.0)
    for seconds in (30.0, 40.0, 50.0):
        estimator.observe_duration("m", seconds)
    stats = estimator.model_stats("m")
    assert stats.samples == 3
    assert stats.hint == 50.0
    assert stats.median == pytest.approx((30.0 * 40.0 * 50.0) ** (1 / 3))
    assert stats.sigma == pytest.approx(statistics.stdev(math.log(s) for s in (30, 40, 50)))
    assert stats.median is not None
    assert stats.ratio_median == pytest.approx(stats.median / 50.0)


def test_invalid_configuration_is_refused() -> None:
    """Nonsense bounds and options raise ValueError."""
    with pytest.raises(ValueError, match="min_interval"):
        PollingBounds(min_interval=10.0, max_interval=5.0)
    with pytest.raises(ValueError, match="first_poll"):
        PollingBounds(first_poll=0.0)
    with pytest.raises(ValueError, match="prior_spread"):
        DurationEstimator(prior_spread=0.0)
    with pytest.raises(ValueError, match="min_samples"):
        DurationEstimator(min_samples=10, max_samples=5)
    with pytest.raises(ValueError, match="detection_slack"):
        DurationEstimator(detection_slack=-1.0)


def test_100k_observations_are_constant_time_and_drift_free() -> None:
    """100k observations and decisions run quickly; the running fit matches the window."""
    rng = random.Random(3)
    estimator = DurationEstimator(bounds=WIDE, max_samples=200)
    durations = [60.0 * math.exp(rng.gauss(0, 0.2)) for _ in range(100_000)]
    started = time.perf_counter()
    for seconds in durations:
        estimator.observe_duration("m", seconds, hint=60.0)
        estimator.next_poll_delay("m", 30.0, hint=60.0)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, elapsed
    stats = estimator.model_stats("m")
    assert stats.samples == 200
    window = [math.log(s) for s in durations[-200:]]
    assert stats.median == pytest.approx(math.exp(statistics.fmean(window)), rel=1e-9)
    assert stats.sigma == pytest.approx(statistics.stdev(window), rel=1e-9)


# --------------------------------------------------------------------------- simulation


def simulate(
    *,
    spread: float,
    hint: float = 60.0,
    jobs: int = 1000,
    arrival_every: float = 1.5,
    bounds: PollingBounds = WIDE,
    pressure: float = 0.0,
    seed: int = 11,
) -> tuple[float, float, float]:
    """Poll ``jobs`` simulated jobs with next_poll_delay; (mean polls, median, p90 delay).

    Each job runs a lognormal time whose 80th percentile is the server's ``hint`` and whose
    log spread is ``spread``. Jobs arrive every ``arrival_every`` s (the queue rate); the
    first poll of a job is decided at queue time, later ones after each miss with the
    server's hint; finished jobs teach the estimator their duration.
    """
    rng = random.Random(seed)
    estimator = DurationEstimator(bounds=bounds)
    durations = [hint * math.exp(spread * (rng.gauss(0, 1) - Z80)) for _ in range(jobs)]
    starts = [i * arrival_every for i in range(jobs)]
    events = [(start, i, True) for i, start in enumerate(starts)]  # (time, job, is_arrival)
    heapq.heapify(events)
    polls = [0] * jobs
    detection = [0.0] * jobs
    while events:
        now, i, arrival = heapq.heappop(events)
        elapsed = now - starts[i]
        if arrival:
            delay = estimator.next_poll_delay("m", 0.0, pressure=pressure)
            heapq.heappush(events, (now + delay, i, False))
            continue
        polls[i] += 1
        if durations[i] <= elapsed:
            detection[i] = elapsed - durations[i]
            estimator.observe_duration("m", durations[i], hint=hint)
        else:
            estimator.observe_hint("m", hint)
            delay = estimator.next_poll_delay("m", elapsed, pressure=pressure, hint=hint)
            heapq.heappush(events, (now + delay, i, False))
    deciles = statistics.quantiles(detection, n=10)
    return statistics.fmean(polls), statistics.median(detection), deciles[-1]


def test_simulation_one_poll_per_job_when_durations_match_the_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1000 jobs whose run times match the server's P80 hint: < 1.6 polls, <= 1.5 s delay."""
    rows = [
        ("matches hint (2% spread)", {"spread": 0.02}),
        ("matches hint, pressure 1", {"spread": 0.02, "pressure": 1.0}),
        ("matches hint, default bounds", {"spread": 0.02, "bounds": PollingBounds()}),
        ("5% spread", {"spread": 0.05}),
        ("15% spread", {"spread": 0.15}),
        ("35% spread (= prior)", {"spread": 0.35}),
        ("35% spread, pressure 1", {"spread": 0.35, "pressure": 1.0}),
    ]
    results = {name: simulate(**kwargs) for name, kwargs in rows}  # type: ignore[arg-type]
    with capsys.disabled():
        print("\n  scenario (hint 60 s, 1000 jobs)      polls/job  median delay  p90 delay")
        for name, (polls, median, p90) in results.items():
            print(f"  {name:<36} {polls:9.3f}  {median:10.2f} s  {p90:7.2f} s")
    polls, median, _ = results["matches hint (2% spread)"]
    assert polls < 1.6
    assert median <= 1.5
    # pressure trades detection delay for fewer polls
    assert results["35% spread, pressure 1"][0] < results["35% spread (= prior)"][0]
