"""The command line: ``python -m venice_audio_async`` (or ``venice-audio``).

Commands: ``models``, ``quote``, ``generate``, ``fetch``, ``batch`` (``--dry-run``: check
and price only), ``resume`` and ``status`` (a batch folder's state; sends nothing).
``--fake`` runs any of them against the built-in
:class:`~venice_audio_async.testing.FakeServer`, with no key and no network; its audio is
playable (WAV tones of the requested length), and for ``batch`` and ``resume`` its jobs are
kept in the batch folder, so ``resume DIR --fake`` finishes what ``batch ... --fake``
started. ``--redis URL`` (or ``VENICE_REDIS_URL``) makes ``generate``, ``batch`` and
``resume`` share one request budget with every other process on the key. ``--json``
prints results as JSON Lines on stdout (``output``); the exit codes tell the causes apart
(``exits``: 1 jobs failed, 2 usage, 3 spending limit, 4 invalid input, 5 authentication,
6 payment, 7 network, 130 interrupted).

One module per job: ``app`` (run a command: signals, exit codes), ``exits`` (the exit code
table), ``parser`` (the arguments), ``connect`` (server, key, clock and session),
``catalogue`` (``models``, ``quote``), ``single`` (``generate``, ``fetch``), ``batch``,
``resume`` and ``status`` (their commands), ``plan`` (``batch --dry-run``), ``drive``
(follow a folder's jobs to the end), ``folder`` and ``manifest`` (the batch folder's
files), ``progress`` (the live display), ``output`` (``--json``), ``logs``
(``--log-level``) and ``console`` (messages to stderr, the note shown on Ctrl-C).
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
