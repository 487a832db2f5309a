"""The command line: ``python -m venice_audio_async`` (or ``venice-audio``).

Commands: ``models``, ``quote``, ``generate``, ``fetch``, ``batch`` and ``resume``.
``--fake`` runs any of them against the built-in
:class:`~venice_audio_async.testing.FakeServer`, with no key and no network; its audio is
playable (WAV tones of the requested length), and for ``batch`` and ``resume`` its jobs are
kept in the batch folder, so ``resume DIR --fake`` finishes what ``batch ... --fake``
started. ``--redis URL`` (or ``VENICE_REDIS_URL``) makes ``generate``, ``batch`` and
``resume`` share one request budget with every other process on the key. Exit codes: 0 all
done, 1 some jobs failed or are unknown, 2 bad input or setup (arguments are checked before
any server is contacted), 3 refused by the spending limit, 130 interrupted.

One module per job: ``app`` (run a command: signals, exit codes), ``parser`` (the
arguments), ``connect`` (server, key, clock and session), ``catalogue`` (``models``,
``quote``), ``single`` (``generate``, ``fetch``), ``batch`` and ``resume`` (their
commands), ``drive`` (follow a folder's jobs to the end), ``folder`` and ``manifest`` (the
batch folder's files), ``progress`` (the live display), ``logs`` (``--log-level``) and
``console`` (messages to stderr, the note shown on Ctrl-C).
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
