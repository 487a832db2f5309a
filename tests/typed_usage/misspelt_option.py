"""Must FAIL ``mypy --strict``: a misspelt option of ``generate`` is a type error (see .ci/run).

.ci/run requires exactly one error here, naming ``duraton_seconds``.
"""

from __future__ import annotations

from venice_audio_async import AsyncSession, AudioResult


async def misspelt(session: AsyncSession) -> AudioResult:
    """``duraton_seconds`` is not an option."""
    return await session.generate("stable-audio-25", "a tune", duraton_seconds=10)
