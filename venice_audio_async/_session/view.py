"""``session.with_options(...)``: the parts of a view of a session.

A view shares everything of its session (pool, budget, scheduler, ledger, lifecycle,
statistics) but the submitter: its queue calls are retried per the view's policy, and its
jobs carry the view's retry policy and ``release_media`` to the scheduler.
"""

from __future__ import annotations

import attrs

from .._core.config import RetryPolicy
from .._polling.release import RELEASE_MODES, ReleaseMedia
from .batch_flow import BatchFlows
from .results import Delivery, Results
from .wiring import SessionParts

__all__ = ["view_parts"]


def view_parts(
    parts: SessionParts, *, retry: RetryPolicy | None, release: ReleaseMedia | None
) -> SessionParts:
    """The parts of a view of the session made of ``parts``.

    Raises:
        TypeError: ``retry`` is not a RetryPolicy.
        ValueError: an unknown ``release_media``.
    """
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"with_options(retry=...) must be a RetryPolicy, got {retry!r}")
    if release is not None and release not in RELEASE_MODES:
        raise ValueError(
            f"with_options(release_media=...) must be one of {'/'.join(RELEASE_MODES)}, "
            f"got {release!r}"
        )
    retrier = parts.retrier if retry is None else parts.retrier.with_policy(retry)
    submitter = parts.submitter.for_jobs(retrier=retrier, retry=retry, release=release)
    flows = BatchFlows(submitter=submitter, scheduler=parts.scheduler, spawn=parts.lifecycle.spawn)
    results = Results(
        delivery=Delivery(scheduler=parts.scheduler, clock=parts.clock),
        flows=flows,
        submitter=submitter,
        clock=parts.clock,
        check_open=parts.lifecycle.check_open,
    )
    return attrs.evolve(parts, retrier=retrier, submitter=submitter, results=results)
