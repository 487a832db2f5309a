"""A journaled batch run again: the keys of its requests, and what the journal says of them.

A request of a batch (``generate_many``, ``submit_many``, ``journal_requests``) that has no
``key`` gets one derived from what is sent and where its audio goes, never from its
position in the batch::

    auto-<sha256 of {wire fields, destination, name, take}>-<occurrence>

The wire fields are the request's JSON body (canonical: sorted keys, no spaces); the
destination is the absolute path of the file or folder (or nothing, for audio kept in
memory). The occurrence numbers identical requests of one batch 1, 2, 3... in order, so two
identical lines are two jobs, and a batch run again with lines reordered or inserted finds
each line's earlier job. ``take`` (a label the caller chooses) gives a deliberate second take
keys of its own.

A key the journal already holds is never queued again (see ``Submitter.submit``): what it
recorded is reported instead, and :func:`journaled_error` rebuilds the error of a job that
failed earlier, as the class it had (an ``APIStatusError`` with its status) where it can.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .._core import errors as _errors
from .._core.converters import unstructure_request
from .._core.errors import APIStatusError, VeniceError
from .._core.models import QueueRequest
from .journal import JournalEntry

__all__ = ["content_digest", "derive_keys", "journaled_error"]

#: The prefix of derived keys (an explicit key is used as it is).
AUTO_PREFIX = "auto-"


def content_digest(
    request: QueueRequest, *, destination: str | None, name: str | None, take: str | None
) -> str:
    """A hex digest of what is sent for ``request`` and where its audio goes."""
    identity = {
        "request": unstructure_request(request),  # the wire body: ``key`` is never sent
        "destination": destination,
        "name": name,
        "take": take,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def derive_keys(
    requests: Sequence[QueueRequest],
    *,
    targets: Sequence[Path | None],
    names: Sequence[str | None],
    take: str | None,
) -> list[str]:
    """Each request's key: its own ``key``, else one derived as the module docstring says."""
    seen: dict[str, int] = {}
    keys = []
    for request, target, name in zip(requests, targets, names, strict=True):
        if request.key is not None:
            keys.append(request.key)
            continue
        where = os.path.abspath(target) if target is not None else None
        digest = content_digest(request, destination=where, name=name, take=take)
        seen[digest] = seen.get(digest, 0) + 1
        keys.append(f"{AUTO_PREFIX}{digest}-{seen[digest]}")
    return keys


def _venice_errors() -> dict[str, type[VeniceError]]:
    found: dict[str, type[VeniceError]] = {}
    pending: list[type[VeniceError]] = [VeniceError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == _errors.__name__:
            found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def journaled_error(entry: JournalEntry) -> VeniceError:
    """The error a job ended with earlier, rebuilt from its journal row.

    An :class:`APIStatusError` comes back as its own class with its status and the server's
    message (the body and headers are not journaled); any other error of this library as
    its class when it takes a plain message; anything else as a :class:`VeniceError` that
    names the type it had.
    """
    message = entry.error or "failed (the journal recorded no message)"
    cls = _venice_errors().get(entry.error_type or "")
    status = entry.error_status
    if cls is not None and issubclass(cls, APIStatusError) and status is not None:
        # str(APIStatusError) is "HTTP 422 on retrieve: <message>": keep only the message.
        head, sep, rest = message.partition(": ")
        endpoint = head.split(" on ", 1)[1] if " on " in head else None
        text = rest if sep and head.startswith(f"HTTP {status}") else message
        return cls(text, status_code=status, endpoint=endpoint)
    if cls is not None and not issubclass(cls, APIStatusError):
        try:
            return cls(message)
        except TypeError:  # a constructor that needs more than a message
            pass
    return VeniceError(f"{entry.error_type or 'error'}: {message}")
