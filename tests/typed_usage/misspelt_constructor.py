"""Must FAIL ``mypy --strict``: a misspelt option of the constructors is a type error.

.ci/run requires exactly two errors here, each naming ``max_spend``.
"""

from __future__ import annotations

from venice_audio_async import AsyncSession, VeniceAudio


def misspelt() -> tuple[AsyncSession, VeniceAudio]:
    """``max_spend`` is not an option (``max_spend_usd`` is)."""
    return AsyncSession(max_spend=5.0), VeniceAudio(max_spend=5.0)
