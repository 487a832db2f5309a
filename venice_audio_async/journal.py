"""The journal's types: the SQLite record of every paid job, and what a resume did.

Pass a path (or an open :class:`Journal`) as ``AsyncSession(journal=...)``; read it with
:meth:`Journal.entries`, one :class:`JournalEntry` per request with its :class:`JobState`;
``AsyncSession.resume`` answers a :class:`ResumeReport`.
"""

# No ``from __future__ import annotations``: it would add ``annotations`` to the module's
# public names (tests/test_exports.py compares them with __all__).
from ._ledger.journal import JobState, Journal, JournalEntry
from ._session.resume import ResumeReport

__all__ = ["JobState", "Journal", "JournalEntry", "ResumeReport"]
