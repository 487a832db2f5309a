"""Watching a session through logging: every request, pause and retry; never the key."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import venice_audio_async as v
from venice_audio_async._core.clock import ManualClock
from venice_audio_async._rate.limiter import RequestLimiter
from venice_audio_async._rate.retry import Retrier
from venice_audio_async.budget import LocalBudget
from venice_audio_async.testing import FakeServer, Fault, JobScript

from ..conftest import API_KEY, UNLIMITED, make_session

pytestmark = pytest.mark.anyio

LOGGER = "venice_audio_async"
FAST_RETRY = v.RetryPolicy(initial_backoff=1.0, max_backoff=4.0)


def _get(record: logging.LogRecord, name: str) -> Any:
    """A structured field of a record (passed in ``extra=``)."""
    return record.__dict__[name]


def _requests(records: list[logging.LogRecord], endpoint: str) -> list[logging.LogRecord]:
    """The DEBUG request-outcome records of one endpoint."""
    return [
        r
        for r in records
        if r.levelno == logging.DEBUG and getattr(r, "endpoint", None) == endpoint
        if hasattr(r, "elapsed")
    ]


def _assert_no_key(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in repr(record.__dict__)


async def test_requests_pauses_and_retries_are_logged_without_the_key(
    fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With DEBUG on and a 429 and 503s injected, each request, pause and retry has a record."""
    fake_server.plan(JobScript(duration=2.0))
    fake_server.inject("queue", Fault.status(429, retry_after=1))
    fake_server.inject("retrieve", Fault.status(503))
    fake_server.inject("complete", Fault.status(503))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with make_session(fake_server, rate_limits=UNLIMITED, retry=FAST_RETRY) as session:
            audio = await session.generate("stable-audio-25", "a short test tune for the logs")
            await session.aclose()  # waits for the media release and its retry
    records = [r for r in caplog.records if r.name == LOGGER]
    _assert_no_key(records)

    queues = _requests(records, "queue")
    assert [_get(r, "status") for r in queues] == [429, 200]
    assert _get(queues[0], "error") == "RateLimitError"
    queue_id = _get(queues[1], "queue_id")
    assert queue_id is not None
    assert _get(queues[1], "error") is None
    assert f"job {queue_id}" in queues[1].getMessage()

    polls = _requests(records, "retrieve")
    assert _get(polls[0], "status") == 503
    assert _get(polls[0], "attempt") == 1
    assert _get(polls[-1], "status") == 200
    assert _get(polls[-1], "attempt") == 2  # the poll after the 503 says it is the second try
    assert all(_get(r, "queue_id") == queue_id for r in polls)
    assert f"{audio.size} bytes" in polls[-1].getMessage()

    completes = _requests(records, "complete")
    assert [(_get(r, "status"), _get(r, "attempt")) for r in completes] == [(503, 1), (200, 2)]
    assert all(isinstance(_get(r, "wait"), float) for r in completes)

    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any(m.startswith("429 from queue: pausing every request") for m in infos)
    assert any(
        m.startswith(f"retrieve of job {queue_id} failed (ServiceUnavailableError)") for m in infos
    )
    assert any(m.startswith("complete failed (ServiceUnavailableError); retry 1 of") for m in infos)


async def test_a_request_that_gets_no_answer_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection is a DEBUG record with status 0 and the error's class."""
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with v.VeniceClient(api_key=API_KEY, base_url="http://127.0.0.1:9/api/v1") as c:
            with pytest.raises(v.ConnectError):
                await c.models()
    (record,) = _requests(caplog.records, "models")
    assert _get(record, "status") == 0
    assert _get(record, "error") == "ConnectError"
    assert _get(record, "attempt") is None  # the low-level client does not count attempts
    assert "models no answer" in record.getMessage()
    _assert_no_key(caplog.records)


@pytest.mark.anyio
async def test_lockout_and_failure_window_pauses_are_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The failed-request lockout and the failure window's hold are logged as warnings."""
    budget = LocalBudget(clock=ManualClock(), rates={}, failure_window=(20, 30.0))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        await budget.record_response("queue", 429, {"x-ratelimit-remaining": "0"})
        for _ in range(15):
            await budget.record_response("retrieve", 500, {})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert "failed-request budget is used up" in warnings[0].getMessage()
    assert _get(warnings[0], "pause") == 30.0
    assert warnings[1].getMessage().startswith("15 failed requests in the last 30 s: holding")
    assert _get(warnings[1], "failures") == 15


async def test_retries_that_run_out_are_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A request that keeps failing ends with one warning naming the endpoint and the error."""
    clock = ManualClock()
    calls: list[int] = []

    async def send() -> None:
        calls.append(1)
        raise v.ServerError("HTTP 500", status_code=500, endpoint="quote")

    async def advance_time() -> None:
        while True:
            await anyio.lowlevel.checkpoint()
            clock.advance_to_next()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with anyio.create_task_group() as tg:
            tg.start_soon(advance_time)
            retrier = Retrier(
                acquire=LocalBudget(clock=clock, rates={}).acquire,
                policy=v.RetryPolicy(attempts=3),
                clock=clock,
            )
            with pytest.raises(v.ServerError):
                await retrier.call("quote", send, limiter=RequestLimiter(4))
            tg.cancel_scope.cancel()
    assert len(calls) == 3
    levels = [(r.levelno, r.getMessage().split(";")[0]) for r in caplog.records]
    assert levels[:2] == [(logging.INFO, "quote failed (ServerError)")] * 2
    assert levels[2][0] == logging.WARNING
    assert levels[2][1].startswith("quote failed 3 time(s), giving up: HTTP 500")


_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    if sys.argv[1] == "configured":
        logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
    import venice_audio_async as v
    from venice_audio_async.testing import FakeServer

    async def main():
        async with FakeServer() as server:
            async with v.VeniceClient(api_key="sk-secret-key", base_url=server.url) as client:
                await client.models()

    asyncio.run(main())
    """
)


def _run_with_env(mode: str, value: str | None) -> subprocess.CompletedProcess[str]:
    env: dict[str, Any] = {k: w for k, w in os.environ.items() if k != "VENICE_AUDIO_LOG"}
    if value is not None:
        env["VENICE_AUDIO_LOG"] = value
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_env_switch_turns_debug_logging_on() -> None:
    """VENICE_AUDIO_LOG=debug prints each request to stderr, without the key; unset, nothing."""
    on = _run_with_env("bare", "debug")
    assert "venice_audio_async DEBUG] models 200" in on.stderr
    assert "sk-secret-key" not in on.stderr
    off = _run_with_env("bare", None)
    assert off.stderr == ""


def test_env_switch_leaves_a_configured_handler_alone() -> None:
    """With a handler configured, the switch only sets the level: no second stderr handler."""
    result = _run_with_env("configured", "debug")
    assert result.stderr == ""
    assert result.stdout.count("models 200") == 1
