"""What a job or a request of a batch came to: ``Succeeded``, ``Failed`` (``Unreachable``),
``Refused``, and the unions ``Outcome`` and ``BatchOutcome``.

Apart from :mod:`._core.models` because an outcome carries an error and
the errors carry models: models, then errors, then outcomes.
"""

from __future__ import annotations

from typing import Union

import attrs

from .errors import VeniceError
from .models import AudioResult, Job, QueueRequest

__all__ = ["BatchOutcome", "Failed", "Outcome", "Refused", "Succeeded", "Unreachable"]


@attrs.frozen
class Succeeded:
    """The job finished and its audio is stored (``audio``).

    .. versionadded:: 0.1.0
    """

    job: Job
    audio: AudioResult
    released: bool = False


@attrs.frozen
class Failed:
    """The job ended with an error (``error``); the others carry on.

    .. versionadded:: 0.1.0
    """

    job: Job
    error: VeniceError


@attrs.frozen
class Unreachable(Failed):
    """The API gave no verdict on the job for ``RetryPolicy.unreachable_after`` seconds:
    every poll failed in transit. It is paid for and may well be finished, its media
    waiting on the server: the journal keeps it "queued" for ``resume``, or pick it up with
    ``AsyncSession.attach(job.model, job.queue_id)``. ``error`` is a
    :class:`~venice_audio_async.JobUnreachable`.

    An outcome of its own kind that is still a :class:`Failed` (code matching ``Failed``
    catches it too): match ``Unreachable(job=job)`` before ``Failed`` to tell it apart.

    .. versionadded:: 0.2.0
    """


@attrs.frozen
class Refused:
    """A request of ``generate_many`` that was never queued: there is no job and no
    ``queue_id``, and nothing was billed. ``error`` says why (a 402, the spending limit,
    the server's validation, no queue token before the deadline). One exception: a
    :class:`QueueOutcomeUnknown` error means the request was sent and its answer lost, so
    a job may exist and be billed; it is not sent again. A batch run again on its journal
    yields these as the first run did, from the journal.

    .. versionadded:: 0.1.0
    """

    request: QueueRequest
    error: VeniceError


Outcome = Union[Succeeded, Failed]  # noqa: UP007 (a runtime alias usable on 3.10)
#: What ``generate_many`` yields: a job's outcome, or a request refused before queueing.
BatchOutcome = Union[Succeeded, Failed, Refused]  # noqa: UP007
