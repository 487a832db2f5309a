"""Run one command: parse, dispatch, turn Ctrl-C and errors into messages and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio

from .._core.errors import VeniceError
from .batch import cmd_batch
from .catalogue import cmd_models, cmd_quote
from .console import forget_interrupt_note, interrupt_note, say
from .exits import ExitCode, code_for_error
from .logs import logging_to_stderr
from .output import emit, json_mode
from .parser import build_parser
from .resume import cmd_resume
from .single import cmd_fetch, cmd_generate
from .status import cmd_status

__all__ = ["main"]

_Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

_COMMANDS: dict[str, _Command] = {
    "models": cmd_models,
    "quote": cmd_quote,
    "generate": cmd_generate,
    "fetch": cmd_fetch,
    "batch": cmd_batch,
    "resume": cmd_resume,
    "status": cmd_status,
}


async def _interruptible(command: _Command, args: argparse.Namespace) -> int:
    """Run ``command``; the first Ctrl-C (or SIGTERM) cancels it through anyio.

    A plain asyncio task cancellation would cut through the session's shielded sections;
    an anyio cancellation respects them, so a ``queue`` call already on the wire still gets
    its answer recorded before the command stops. A second Ctrl-C stops at once.
    """
    interrupted = False
    code = 130
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            code = await command(args)
        except Exception as exc:  # re-raised below as itself, not inside an ExceptionGroup
            failure = exc
        tg.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    if failure is not None:
        raise failure
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (:class:`~.exits.ExitCode`)."""
    args = build_parser().parse_args(argv)
    forget_interrupt_note()
    try:
        with logging_to_stderr(args.log_level):
            code = anyio.run(_interruptible, _COMMANDS[args.command], args, backend="asyncio")
            return int(code)
    except KeyboardInterrupt:
        say("\n" + interrupt_note())
        return _stopped(args, ExitCode.INTERRUPTED, "KeyboardInterrupt", interrupt_note())
    except (VeniceError, ValueError, ImportError) as error:  # ImportError: --redis, no extra
        say(f"error: {error}")
        return _stopped(args, code_for_error(error), type(error).__name__, str(error))
    except BrokenPipeError:
        # The reader went away (``venice-audio models | head``): stop quietly, as Unix tools
        # do. Standard output is pointed at /dev/null so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.BROKEN_PIPE)
    except OSError as error:  # a file or folder the command needed: a message, no traceback
        message = f"{_describe(error)}{_journal_note(args)}"
        say(f"error: {message}")
        return _stopped(args, ExitCode.INVALID_INPUT, type(error).__name__, message)


def _stopped(args: argparse.Namespace, code: ExitCode, kind: str, message: str) -> int:
    """The exit code of a command stopped by an error; with ``--json``, an ``error`` line."""
    if json_mode(args):
        # Nobody may read stdout any more (a closed pipe): the exit code says it all then.
        with contextlib.suppress(BrokenPipeError):
            emit("error", exit_code=int(code), error=kind, message=message)
    return int(code)


def _describe(error: OSError) -> str:
    reason = error.strerror or str(error)
    return f"{reason}: {error.filename}" if error.filename else reason


def _journal_note(args: argparse.Namespace) -> str:
    """Where a batch that stopped on a file error stands (its jobs are in the journal)."""
    folder = getattr(args, "out", None) or getattr(args, "dir", None)
    if args.command not in ("batch", "resume") or folder is None:
        return ""
    return (
        f". Every job already queued is recorded in the folder's journal: once the cause is "
        f"fixed, venice-audio resume {folder}" + (" --fake" if args.fake else "") + " finishes it"
    )
