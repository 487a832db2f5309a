"""``extra_body``: queue fields the library does not model, sent as given; the fake is as
strict as the API unless told to accept them."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async.journal import Journal
from venice_audio_async.testing import FakeServer

from ..conftest import API_KEY, TIME_SCALE, make_session

pytestmark = pytest.mark.anyio

EXTRA = {"future_field": {"mode": "wide", "steps": [1, 2]}}


@pytest.fixture
async def accepting_server() -> AsyncIterator[FakeServer]:
    async with FakeServer(
        time_scale=TIME_SCALE, api_keys=[API_KEY], accept_extra_fields={"future_field"}
    ) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("venice_audio_async._client._UNCHECKED", set())


async def test_the_strict_fake_refuses_an_unknown_field_as_the_api_does(
    fake_server: FakeServer,
) -> None:
    """Sent as given; refused with a 400 naming the key; nothing billed."""
    async with make_session(fake_server) as session:
        with pytest.raises(v.BadRequestError) as refused:
            await session.generate(
                "stable-audio-25", "rain on a tin roof", duration_seconds=5, extra_body=EXTRA
            )
        assert session.unfinished() == []
    assert "future_field" in str(refused.value.body)
    (sent,) = fake_server.requests_to("queue")
    assert sent.body is not None
    assert sent.body["future_field"] == EXTRA["future_field"]
    assert sent.status == 400
    assert not fake_server.jobs


async def test_an_accepted_extra_is_sent_as_given_and_logged_once(
    accepting_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="venice_audio_async")
    async with make_session(accepting_server) as session:
        for _ in range(2):
            audio = await session.generate(
                "stable-audio-25", "rain on a tin roof", duration_seconds=5, extra_body=EXTRA
            )
            assert audio.data
    bodies = [r.body for r in accepting_server.requests_to("queue")]
    assert (
        bodies
        == [
            {
                "model": "stable-audio-25",
                "prompt": "rain on a tin roof",
                "duration_seconds": 5,
                **EXTRA,
            }
        ]
        * 2
    )
    said = [r for r in caplog.records if "extra_body" in r.getMessage()]
    assert len(said) == 1
    assert "future_field" in said[0].getMessage()


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ({"x": math.nan}, ValueError, "not JSON"),
        ({"x": object()}, ValueError, "not JSON"),
        ({"duration_seconds": 5}, ValueError, "duration_seconds=... instead"),
        ({1: "x"}, TypeError, "must be str"),
        (["x"], TypeError, "mapping"),
    ],
)
async def test_a_bad_extra_body_is_refused_before_sending(
    fake_server: FakeServer, extra: object, error: type[Exception], match: str
) -> None:
    async with make_session(fake_server) as session:
        with pytest.raises(error, match=match):
            await session.submit("stable-audio-25", "rain on a tin roof", extra_body=extra)  # type: ignore[arg-type]
    assert not fake_server.requests_to("queue")


async def test_extra_body_survives_the_journal(
    accepting_server: FakeServer, tmp_path: Path
) -> None:
    """A journaled request keeps its extras: resume would send them as the first run did."""
    path = tmp_path / "jobs.sqlite3"
    async with make_session(accepting_server, journal=path) as session:
        await session.journal_requests(
            [
                v.QueueRequest(
                    "stable-audio-25", "rain on a tin roof", duration_seconds=5, extra_body=EXTRA
                )
            ]
        )
    journal = await Journal.open(path)
    try:
        (entry,) = await journal.entries()
    finally:
        await journal.aclose()
    assert entry.request.extra_body == EXTRA
    async with make_session(accepting_server, journal=path) as session:
        report = await session.resume()
        assert report.queued == 1
    (sent,) = accepting_server.requests_to("queue")
    assert sent.body is not None
    assert sent.body["future_field"] == EXTRA["future_field"]
