"""Under trio the session and client refuse to open with a clear error (aiohttp needs asyncio)."""

from __future__ import annotations

from pathlib import Path

import pytest

import venice_audio_async as v

pytest.importorskip("trio", reason="trio is not installed (pip install trio, or the test extra)")

pytestmark = pytest.mark.anyio

#: Nothing listens here; the error must come before any connection is tried.
NOWHERE = "http://127.0.0.1:9/api/v1"


@pytest.fixture
def anyio_backend() -> str:
    """Run these tests on trio, not asyncio."""
    return "trio"


async def test_session_under_trio_says_asyncio_is_needed(tmp_path: Path) -> None:
    """Opening a session under trio raises AsyncioRequiredError naming asyncio and trio."""
    session = v.AsyncSession(api_key="k", base_url=NOWHERE, journal=tmp_path / "j.sqlite3")
    with pytest.raises(v.AsyncioRequiredError) as caught:
        async with session:
            pytest.fail("the session opened under trio")
    message = str(caught.value)
    assert "asyncio" in message
    assert "trio" in message
    assert "no running event loop" not in message
    assert isinstance(caught.value, RuntimeError)
    assert not (tmp_path / "j.sqlite3").exists()  # refused before anything was opened


async def test_client_under_trio_says_asyncio_is_needed() -> None:
    """The low-level client refuses trio too, at async with and at its first request."""
    with pytest.raises(v.AsyncioRequiredError, match="asyncio"):
        async with v.VeniceClient(api_key="k", base_url=NOWHERE):
            pytest.fail("the client opened under trio")
    client = v.VeniceClient(api_key="k", base_url=NOWHERE)
    with pytest.raises(v.AsyncioRequiredError, match="asyncio"):
        await client.models()
    await client.aclose()


def test_asyncio_is_the_only_framework_claimed() -> None:
    """The package's classifiers claim asyncio, and neither AnyIO nor Trio."""
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"Framework :: AsyncIO"' in pyproject
    assert "Framework :: AnyIO" not in pyproject
    assert "Framework :: Trio" not in pyproject
