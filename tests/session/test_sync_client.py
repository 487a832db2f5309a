"""``VeniceAudio``, the synchronous client, against the fake server in each setting users run
it in: a plain script, many threads sharing one client, a thread that already runs an event
loop, and a close while another thread waits.

The fake server runs on an event loop of its own in a background thread (a blocking portal),
so these tests are plain functions, like the code that uses the client.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, JobScript, ScaledClock

from ..conftest import API_KEY, TIME_SCALE, UNLIMITED, max_in_window

MODEL = "stable-audio-25"


@contextmanager
def _fake(time_scale: float = TIME_SCALE, **options: Any) -> Iterator[FakeServer]:
    """A FakeServer serving from a thread of its own until the block ends."""
    options.setdefault("job_script", JobScript(duration=5.0))
    with start_blocking_portal() as portal:
        server = portal.call(lambda: FakeServer(time_scale=time_scale, **options))
        with portal.wrap_async_context_manager(server):
            yield server


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A fast fake server in its own thread, accepting API_KEY."""
    with _fake(api_keys=[API_KEY]) as fake:
        yield fake


def _client(
    server: FakeServer, *, time_scale: float = TIME_SCALE, **overrides: Any
) -> v.VeniceAudio:
    options: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": server.url,
        "clock": ScaledClock(time_scale),
        "rate_limits": UNLIMITED,
    }
    options.update(overrides)
    return v.VeniceAudio(**options)


def _requests(count: int, what: str = "lo-fi beat number") -> list[v.QueueRequest]:
    return [
        v.QueueRequest(model=MODEL, prompt=f"{what} {i}", duration_seconds=5) for i in range(count)
    ]


def _prompts(server: FakeServer) -> list[str]:
    return [str(r.body["prompt"]) for r in server.requests_to("queue") if r.body]


# --------------------------------------------------------------------------- a plain script

SCRIPT = """
import json, sys
from venice_audio_async import QueueRequest, Succeeded, VeniceAudio
from venice_audio_async.testing import ScaledClock

with VeniceAudio(base_url=sys.argv[1], clock=ScaledClock({scale})) as client:
    audio = client.generate("stable-audio-25", "a tune from a script", duration_seconds=5)
    requests = [
        QueueRequest(model="stable-audio-25", prompt=f"church bells {{i}}", duration_seconds=5)
        for i in range(3)
    ]
    with client.generate_many(requests) as results:
        kinds = [type(outcome).__name__ for outcome in results]
    job = client.submit("stable-audio-25", "one more, waited for", duration_seconds=5)
    with client.results([job]) as outcomes:
        last = next(outcomes)
    print(json.dumps({{
        "size": audio.size,
        "kinds": kinds,
        "last": type(last).__name__,
        "succeeded": client.statistics().jobs_succeeded,
    }}))
"""

#: Never closed: the interpreter must still exit (the loop's thread is a daemon, and the
#: client is closed at exit, logging the job it leaves running).
UNCLOSED = """
import logging, sys
from venice_audio_async import VeniceAudio
from venice_audio_async.testing import ScaledClock

logging.basicConfig(level=logging.WARNING)
client = VeniceAudio(base_url=sys.argv[1], clock=ScaledClock({scale}))
client.generate("stable-audio-25", "a tune, and no close", duration_seconds=5)
job = client.submit("stable-audio-25", "still running at exit", duration_seconds=5)
print("end of script", job.queue_id)
"""


def _run_script(tmp_path: Path, source: str, url: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source.format(scale=TIME_SCALE)))
    env = {"VENICE_API_KEY": API_KEY, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [sys.executable, str(path), url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_plain_script(server: FakeServer, tmp_path: Path) -> None:
    """A script with no event loop of its own generates, batches and waits, then exits."""
    done = _run_script(tmp_path, SCRIPT, server.url)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["size"] > 0
    assert seen["kinds"] == ["Succeeded"] * 3
    assert seen["last"] == "Succeeded"
    assert seen["succeeded"] == 5
    assert server.count("queue") == 5
    # Closed cleanly: no warning, no traceback. (The log may list generate_many's outcomes
    # as untaken: that is generate_many's, with or without this client.)
    assert "Warning" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_script_that_never_closes_still_exits(tmp_path: Path) -> None:
    """The loop's thread never keeps the interpreter alive; the client closes at exit and
    logs the id of the job left running (it was paid for)."""
    with _fake(api_keys=[API_KEY], job_script=JobScript(duration=1e6)) as server:
        server.plan(JobScript(duration=5.0))  # the first job finishes; the second never does
        done = _run_script(tmp_path, UNCLOSED, server.url)
    assert done.returncode == 0, done.stderr
    queue_id = done.stdout.split()[-1]
    assert "1 unfinished job(s)" in done.stderr
    assert queue_id in done.stderr


# --------------------------------------------------------------------------- many threads


def test_twelve_threads_share_one_session() -> None:
    """Twelve threads generating at once share one session: one queue budget for all (the
    fake never sees more than its 6 a minute), one set of statistics counting every job."""
    scale = 0.01  # 10 ms of real time per virtual second: room for thread jitter
    with _fake(scale, api_keys=[API_KEY]) as server:
        client = _client(
            server,
            time_scale=scale,
            rate_limits=v.RateLimits(
                queue_per_minute=6, retrieve_per_minute=None, pooled_per_minute=None
            ),
        )
        with client:
            sizes: list[int] = []
            errors: list[BaseException] = []

            def one(i: int) -> None:
                try:
                    audio = client.generate(MODEL, f"thread number {i} plays", duration_seconds=5)
                    sizes.append(audio.size)
                except BaseException as error:
                    errors.append(error)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not errors
            assert len(sizes) == 12
            stats = client.statistics()
        times = [r.time for r in server.requests_to("queue")]
    assert stats.jobs_succeeded == 12
    assert stats.requests["queue"] == 12
    assert stats.rate_limited == 0
    assert len(times) == 12
    # Twelve budgets would send all twelve at once; the one budget, six a minute (a
    # second of slack for the threads' scheduling jitter).
    assert max_in_window(times, 59.0) <= 6


# --------------------------------------------------------------------------- a running loop


def test_called_from_a_thread_running_an_event_loop(server: FakeServer) -> None:
    """Inside a coroutine (a Jupyter cell): no 'asyncio.run() cannot be called from a
    running event loop', no deadlock; the session's loop is another thread."""

    async def cell() -> tuple[int, list[str]]:
        with _client(server) as client:
            audio = client.generate(MODEL, "a tune from a notebook", duration_seconds=5)
            with client.generate_many(_requests(2)) as results:
                kinds = [type(outcome).__name__ for outcome in results]
            await asyncio.sleep(0)  # this loop keeps running between the calls
            return audio.size, kinds

    size, kinds = asyncio.run(cell())
    assert size > 0
    assert kinds == ["Succeeded", "Succeeded"]
    assert server.count("queue") == 3


# --------------------------------------------------------------------------- close


def test_close_while_other_threads_wait(caplog: pytest.LogCaptureFixture) -> None:
    """A thread waiting in wait_for and one iterating generate_many get SessionStateError
    promptly when another thread closes the client: no hang, no CancelledError."""
    with _fake(api_keys=[API_KEY], job_script=JobScript(duration=1e6)) as server:
        client = _client(server)
        job = client.submit(MODEL, "a job that never ends", duration_seconds=5)
        raised: dict[str, BaseException | None] = {}

        def wait() -> None:
            try:
                client.wait_for(job)
            except BaseException as error:
                raised["wait_for"] = error

        def iterate() -> None:
            try:
                with client.generate_many(_requests(2, "an endless tune")) as results:
                    for _ in results:
                        pass
            except BaseException as error:
                raised["generate_many"] = error

        threads = [threading.Thread(target=wait), threading.Thread(target=iterate)]
        for thread in threads:
            thread.start()
        # Both are waiting in the loop (two calls, the generate_many block held by a third).
        while len(client._loop._scopes) < 3 or server.count("queue") < 3:
            assert not raised, raised
            threading.Event().wait(0.001)
        with caplog.at_level(logging.WARNING):
            client.close()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
    assert isinstance(raised["wait_for"], v.SessionStateError)
    assert isinstance(raised["generate_many"], v.SessionStateError)
    assert "3 unfinished job(s)" in caplog.text  # paid for: their ids are logged
    with pytest.raises(v.SessionStateError):
        client.wait_for(job)


def test_every_call_after_close_raises(server: FakeServer) -> None:
    """After close every call raises SessionStateError; closing twice is harmless."""
    with _client(server) as client:
        job = client.submit(MODEL, "before the close", duration_seconds=5)
        client.wait_for(job)
    client.close()
    calls: dict[str, Any] = {
        "generate": lambda: client.generate(MODEL, "after the close", duration_seconds=5),
        "submit": lambda: client.submit(MODEL, "after the close", duration_seconds=5),
        "submit_many": lambda: client.submit_many(_requests(1)),
        "wait_for": lambda: client.wait_for(job),
        "models": client.models,
        "quote": lambda: client.quote(MODEL, duration_seconds=5),
        "status": lambda: client.status(job),
        "statistics": client.statistics,
        "unfinished": client.unfinished,
        "finished": client.finished,
        "forget": lambda: client.forget(job),
        "attach": lambda: client.attach(MODEL, job.queue_id),
        "resume": client.resume,
    }
    for name, call in calls.items():
        with pytest.raises(v.SessionStateError):
            call()
        assert name
    for manager in (client.generate_many(_requests(1)), client.results([job])):
        with pytest.raises(v.SessionStateError), manager:
            pass
    with pytest.raises(v.SessionStateError), client:
        pass
    assert server.count("queue") == 1


def test_never_closed_warns_and_closes_itself(server: FakeServer) -> None:
    """A client collected unclosed emits a ResourceWarning and its loop closes the session."""
    client = _client(server)
    client.generate(MODEL, "a tune, then forgotten", duration_seconds=5)
    loop = client._loop
    with pytest.warns(ResourceWarning, match="never closed"):
        del client  # nothing else refers to it: collected at once
    loop._thread.join(10)
    assert not loop._thread.is_alive()
    assert loop.closed


# --------------------------------------------------------------------------- generate_many


def test_leaving_generate_many_early_sends_nothing_more(server: FakeServer) -> None:
    """Leaving the ``with`` after the first outcome leaves the async block: the requests
    still waiting for a queue token are never sent, and the next submit goes first."""
    requests = _requests(10, "abandoned beat")
    client = _client(
        server,
        rate_limits=v.RateLimits(
            queue_per_minute=2, retrieve_per_minute=None, pooled_per_minute=None
        ),
    )
    with client:
        with client.generate_many(requests) as results:
            first = next(results)
        assert isinstance(first, v.Succeeded)
        assert client.statistics().submits_waiting == 0  # the async block is left already
        sent = server.count("queue")
        assert sent < len(requests)
        client.generate(MODEL, "the next request goes first", duration_seconds=5)
        for job in client.unfinished():
            client.wait_for(job)
    prompts = _prompts(server)
    assert len(prompts) == sent + 1
    assert prompts[-1] == "the next request goes first"
    assert prompts[:-1] == [r.prompt for r in requests[:sent]]


# --------------------------------------------------------------------------- the same API


def test_the_same_exceptions_as_the_session(server: FakeServer) -> None:
    """Errors are the session's, as they are: not wrapped."""
    with _client(server, retry=v.RetryPolicy.testing(attempts=2)) as client:
        with pytest.raises(v.RequestValidationError):
            client.submit(MODEL, "far too long", duration_seconds=100_000)
        too_long = v.QueueRequest(model=MODEL, prompt="far too long", duration_seconds=100_000)
        with pytest.raises(v.RequestValidationError), client.generate_many([too_long]):
            pass
        server.plan(JobScript(duration=0.0, fail_status=500))
        job = client.submit(MODEL, "a doomed request", duration_seconds=5)
        with pytest.raises(v.InferenceFailedError):
            client.wait_for(job)
        with pytest.raises(ValueError, match="not tracked"):
            client.wait_for(v.Job(model=MODEL, queue_id="never-seen"))
    assert server.count("queue") == 1


def test_attach_status_and_quote(server: FakeServer) -> None:
    """attach works on a fresh client (it starts the session); status, quote, models."""
    with _client(server) as first:
        job = first.submit(MODEL, "queued by another process", duration_seconds=5)
        first.forget(job)
    with _client(server) as client:
        assert client.status(job).phase == "unknown"
        attached = client.attach(MODEL, job.queue_id)
        assert client.wait_for(attached).size > 0
        assert client.status(attached).phase == "succeeded"
        assert client.quote(MODEL, duration_seconds=5).quote >= 0
        assert any(model.id == MODEL for model in client.models())
        assert client.unfinished() == []


def test_invalid_options_leave_no_thread() -> None:
    """A constructor refusing its options raises as AsyncSession does, and stops its loop."""
    before = threading.active_count()
    with pytest.raises(ValueError, match="release_media"):
        v.VeniceAudio(api_key="k", release_media="sometimes")  # type: ignore[arg-type]
    assert threading.active_count() == before


def test_the_options_are_the_async_sessions() -> None:
    """Same keyword arguments, defaults and annotations as AsyncSession, in the same order."""

    def options(cls: type) -> list[tuple[str, object, object, object]]:
        parameters = inspect.signature(cls).parameters.values()
        return [(p.name, p.kind, p.default, p.annotation) for p in parameters]

    assert options(v.VeniceAudio) == options(v.AsyncSession)


def test_journal_and_resume(server: FakeServer, tmp_path: Path) -> None:
    """A batch recorded in a journal, then resumed: on_job runs in the client's thread and
    may read status there; the calls that wait are refused there, saying why."""
    seen: list[str] = []
    refused: list[BaseException] = []
    with _client(server, journal=tmp_path / "jobs.sqlite3", output_dir=tmp_path) as client:

        def on_job(job: v.Job) -> None:
            seen.append(client.status(job).phase)
            try:
                client.wait_for(job)
            except RuntimeError as error:
                refused.append(error)

        cost = client.journal_requests(_requests(3, "journaled tune"))
        assert cost >= 0
        report = client.resume(on_job=on_job)
        assert report.queued == 3
        with client.results(report.jobs) as results:
            outcomes = list(results)
    assert [type(o).__name__ for o in outcomes] == ["Succeeded"] * 3
    assert len(seen) == 3
    assert len(refused) == 3
    assert "own event loop" in str(refused[0])
    for outcome in outcomes:
        assert isinstance(outcome, v.Succeeded)
        assert outcome.audio.path is not None
        assert Path(outcome.audio.path).parent == tmp_path


def test_collected_in_its_own_loop_thread_still_closes(server: FakeServer) -> None:
    """The last reference may drop in the loop's thread (a call's task ending there): the
    close then starts there too, and the thread ends."""
    client = _client(server)
    client.models()
    loop = client._loop
    loop._portal.call(loop.close_soon)  # what __del__ does, run in the loop's thread
    loop._thread.join(10)
    assert not loop._thread.is_alive()
    assert loop.closed
    with pytest.raises(v.SessionStateError):
        client.models()
    client.close()  # harmless now


def test_with_options_views_share_the_client(server: FakeServer) -> None:
    """A view of the client: the same session and thread, its jobs released per its own
    release_media, its timeout bounding its calls; closing the client closes the view."""
    with _client(server) as client:
        deleting = client.with_options(release_media="delete_on_retrieve", timeout=500.0)
        assert deleting._loop is client._loop
        job = deleting.submit(MODEL, "rain on a tin roof", duration_seconds=5)
        assert client.wait_for(job).data
        assert client.generate(MODEL, "rain on a tin roof", duration_seconds=5).data
        assert client.statistics().jobs_succeeded == 2
        assert deleting.statistics().jobs_succeeded == 2  # one session: both count
    flags = {
        (r.body or {}).get("queue_id"): (r.body or {}).get("delete_media_on_completion")
        for r in server.requests_to("retrieve")
    }
    assert flags[job.queue_id] is True
    assert sorted(flags.values(), key=str) == [None, True]
    with pytest.raises(v.SessionStateError):
        deleting.statistics()
