"""The command line's exit codes: one table, and which code an error or a failed job gets.

A script tells the causes apart by the code alone: fix the arguments (2) or the input (4),
the key (5), the account's balance (6), wait for the network (7), raise ``--max-spend`` (3),
or look at the jobs that failed (1). The table is printed in ``--help`` (:func:`epilog`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from .._core import errors as _errors
from .._core.errors import (
    AuthenticationError,
    BadRequestError,
    JobUnreachable,
    JournalError,
    MissingAPIKeyError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    SpendLimitExceeded,
    TransportError,
)

__all__ = ["ExitCode", "code_for_error", "code_for_failures", "epilog"]


class ExitCode(enum.IntEnum):
    """What the exit status of ``venice-audio`` means (the ``--help`` table)."""

    #: Everything asked for was done.
    OK = 0
    #: Some jobs failed or are unknown (their queue answer was lost: they may exist and be
    #: billed, so they are not sent again), or the API refused the request for another
    #: reason (content policy, a server error).
    FAILED = 1
    #: Bad arguments: argparse's own code.
    USAGE = 2
    #: The spending limit (``--max-spend``) refused the batch, or stopped it.
    SPEND_LIMIT = 3
    #: Bad input or setup: a batch file with bad lines, a request breaking the model's
    #: rules, a folder that cannot be written, a damaged or busy journal.
    INVALID_INPUT = 4
    #: No API key, or the key was refused (401 / 403).
    AUTHENTICATION = 5
    #: The API asked for payment (402): the balance is spent.
    PAYMENT = 6
    #: The server could not be reached or did not answer (connection refused, timeouts,
    #: dropped connections).
    NETWORK = 7
    #: Interrupted (Ctrl-C, SIGTERM); the journal keeps what was queued.
    INTERRUPTED = 130
    #: The reader of standard output went away (``| head``): 128 + SIGPIPE.
    BROKEN_PIPE = 141


_SHORT = {
    ExitCode.OK: "all done",
    ExitCode.FAILED: "some jobs failed or are unknown (see the manifest / the message)",
    ExitCode.USAGE: "bad arguments (usage)",
    ExitCode.SPEND_LIMIT: "refused or stopped by --max-spend",
    ExitCode.INVALID_INPUT: "invalid input: bad batch lines, an unwritable folder, a bad journal",
    ExitCode.AUTHENTICATION: "no API key, or the key was refused (401/403)",
    ExitCode.PAYMENT: "payment required (402): the balance is spent",
    ExitCode.NETWORK: "network: the server could not be reached, or timed out",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); resume finishes a batch",
    ExitCode.BROKEN_PIPE: "the output pipe closed",
}


def epilog() -> str:
    """The exit code table for ``--help``."""
    rows = "\n".join(f"  {int(code):>3}  {_SHORT[code]}" for code in ExitCode)
    return f"exit codes:\n{rows}"


def _network(error: BaseException) -> bool:
    if isinstance(error, TransportError):
        return True
    if isinstance(error, JobUnreachable):
        return isinstance(error.last_error, TransportError)
    return False


def code_for_error(error: BaseException) -> ExitCode:
    """The exit code of a command that stopped on ``error``."""
    if isinstance(error, (AuthenticationError, PermissionDeniedError, MissingAPIKeyError)):
        return ExitCode.AUTHENTICATION
    if isinstance(error, PaymentRequiredError):
        return ExitCode.PAYMENT
    if isinstance(error, SpendLimitExceeded):
        return ExitCode.SPEND_LIMIT
    if _network(error):
        return ExitCode.NETWORK
    # ValueError covers RequestValidationError and BadRequestError's input problems;
    # OSError a file or folder; ImportError a missing extra (--redis).
    # A 400 / 404 is the request's fault (an unknown model, a field the API refuses).
    invalid = (ValueError, OSError, ImportError, BadRequestError, NotFoundError, JournalError)
    if isinstance(error, invalid):
        return ExitCode.INVALID_INPUT
    return ExitCode.FAILED


_AUTH_NAMES = frozenset(c.__name__ for c in (AuthenticationError, PermissionDeniedError))
_NETWORK_STATUSES = frozenset({502, 504})


def code_for_failures(errors: Iterable[BaseException | tuple[str | None, int | None]]) -> ExitCode:
    """The exit code of a batch whose jobs failed with ``errors`` (``OK`` if there are none).

    Each is an exception, or a journal row's ``(error_type, error_status)``. A refused key
    wins over a payment refusal, which wins over the network: the first two stop every
    job, the network may only have stopped some.
    """
    codes: set[ExitCode] = set()
    for error in errors:
        if isinstance(error, BaseException):
            codes.add(code_for_error(error))
            continue
        name, status = error
        if name in _AUTH_NAMES or status in (401, 403):
            codes.add(ExitCode.AUTHENTICATION)
        elif name == PaymentRequiredError.__name__ or status == 402:
            codes.add(ExitCode.PAYMENT)
        elif _is_network_name(name) or status in _NETWORK_STATUSES:
            codes.add(ExitCode.NETWORK)
        else:
            codes.add(ExitCode.FAILED)
    for code in (ExitCode.AUTHENTICATION, ExitCode.PAYMENT, ExitCode.NETWORK, ExitCode.FAILED):
        if code in codes:
            return code
    return ExitCode.OK


def _is_network_name(name: str | None) -> bool:
    """Whether a journal's ``error_type`` names a transport failure (a class of ours)."""
    cls = getattr(_errors, name or "", None)
    return isinstance(cls, type) and issubclass(cls, (TransportError, JobUnreachable))
