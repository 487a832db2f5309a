"""The Python examples of README.md and of the docs pages run as written, against the fake
server (tests/test_docs_examples.py checks that every block is run by a test here)."""

from __future__ import annotations

import logging
import re
import textwrap
import types
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import venice_audio_async as v
from venice_audio_async.budget import RedisBudget
from venice_audio_async.testing import FakeServer, JobScript, ScaledClock

from .conftest import TIME_SCALE
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
#: The pages whose Python blocks are examples: the README and every docs page.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

#: A ```python fence, with or without attributes after the language (``title="..."``).
PYTHON_BLOCK = r"```python[^\n]*\n(.*?)```"


def _blocks() -> dict[str, str]:
    """Python blocks of every page, keyed by the page and the line of prose just before them."""
    found = {}
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"\n([^\n]*)\n\n" + PYTHON_BLOCK, text, re.S):
            found[f"{page.relative_to(ROOT)}: {match.group(1).strip()}"] = match.group(2)
    return found


#: Sessions the examples opened, by namespace: what the user looks at afterwards.
OPENED = "__sessions_opened__"


def _namespace(server: FakeServer, **extra: Any) -> dict[str, Any]:
    """The package's names, with ``AsyncSession`` given the fake's key and URL.

    Only the key, the URL and the fake's time scale are injected (a user's session reads the
    key from the environment); every session opened is kept for :func:`_user_view`.
    """
    scale = server.clock.scale if isinstance(server.clock, ScaledClock) else TIME_SCALE
    opened: list[v.AsyncSession] = []

    def session(*args: Any, **options: Any) -> v.AsyncSession:
        options.setdefault("api_key", "k")
        options.setdefault("base_url", server.url)
        options.setdefault("clock", ScaledClock(scale))
        made = v.AsyncSession(*args, **options)
        opened.append(made)
        return made

    names: dict[str, Any] = {name: getattr(v, name) for name in v.__all__}
    names["AsyncSession"] = session
    names[OPENED] = opened
    names.update(extra)
    return names


def _user_view(names: dict[str, Any], caplog: pytest.LogCaptureFixture) -> list[v.AsyncSession]:
    """What a user sees after an example ran: no warning logged, nothing left untaken.

    Returns the sessions the example opened.
    """
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("venice_audio_async") and record.levelno >= logging.WARNING
    ]
    assert not warnings, warnings
    opened: list[v.AsyncSession] = names[OPENED]
    for session in opened:
        assert session.statistics().outcomes_untaken == 0
        assert session.finished() == []
    return opened


async def _run(code: str, names: dict[str, Any]) -> dict[str, Any]:
    # The session's imports come from ``names`` (one line, or parenthesised over several).
    code = re.sub(r"^from venice_audio_async import \([^)]*\)\n", "", code, flags=re.M)
    body = "\n".join(
        line for line in code.splitlines() if not line.startswith(("from venice", "import asyncio"))
    ).replace("asyncio.run(main())", "await main()")
    source = "async def __snippet__():\n" + textwrap.indent(body, "    ") + "\n    return locals()"
    exec(compile(source, str(README), "exec"), names)  # our own pages
    result: dict[str, Any] = await names["__snippet__"]()
    return result


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A fast fake server for the examples."""
    async with FakeServer(time_scale=TIME_SCALE, job_script=JobScript(duration=5.0)) as fake:
        yield fake


#: What identifies each example of the README and the docs, and the test that runs it.
EXAMPLES = {
    "asyncio.run(main())": "test_first_generation",
    "make_jingle": "test_web_handler",
    "generate_many": "test_batch_to_a_folder",
    "send_audio": "test_bot",
    "PollingBounds(delay_per_poll": "test_polling_bounds_example",
    "RedisBudget.from_url": "test_many_processes_examples",
    "server.inject": "test_testing_example",
    "pooled_rate_limit=60": "test_fake_server_limits_example",
    "ThreadPoolExecutor": "test_without_async_script",
    "session = AsyncSession()  # nothing opened yet": "test_notebook_session_without_async_with",
    "session.with_options(": "test_with_options_example",
    "accept_extra_fields=": "test_extra_body_example",
}


async def test_first_generation(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    """The first example generates one track and releases its media."""
    code = next(c for k, c in _blocks().items() if "asyncio.run(main())" in c)
    names = _namespace(server)
    await _run(code, names)
    assert server.count("queue") == 1
    assert server.count("complete") == 1
    _user_view(names, caplog)


async def _web_app(server: FakeServer, **session_options: Any) -> tuple[web.Application, Any]:
    """The README's web app, built as written (``session_options`` override its session's:
    another worker on a disk of its own); the app and its session key."""
    code = next(c for c in _blocks().values() if "make_jingle" in c)
    names = _namespace(server)
    if session_options:
        opened = names["AsyncSession"]
        names["AsyncSession"] = lambda **options: opened(**{**options, **session_options})
    local = await _run(code, names)
    return local["app"], local["VENICE"]


async def test_web_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The web handler example answers with the audio, kept in its folder."""
    monkeypatch.chdir(tmp_path)
    # The job's 5 s against the handler's 20 s timeout: 150 ms of real time to spare at this
    # scale (15 ms at TIME_SCALE, which a loaded machine used up: a 202).
    async with FakeServer(time_scale=0.01, job_script=JobScript(duration=5.0)) as server:
        app, _ = await _web_app(server)
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/jingles")
            assert response.status == 200
            body = await response.read()
    (queue_id,) = server.queue_ids()
    assert body == server.audio_for(queue_id)
    assert [p.read_bytes() for p in (tmp_path / "jingles").iterdir()] == [body]


async def test_web_handler_come_back_later_and_fetch_twice(
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job outliving the handler's timeout is a 202, fetched when the client returns; a
    client that fetches again gets the same bytes, from this worker (its file) and from
    another worker (its own session and disk, the server's kept copy), never a 404."""
    monkeypatch.chdir(tmp_path)
    server.plan(JobScript(duration=60.0))
    scale = server.clock.scale if isinstance(server.clock, ScaledClock) else TIME_SCALE
    app, key = await _web_app(server)
    other, other_key = await _web_app(server, output_dir=tmp_path / "other-worker")
    with caplog.at_level(logging.WARNING, logger="venice_audio_async"):
        async with TestClient(TestServer(app)) as client:
            first = await client.post("/jingles")
            assert first.status == 202
            queue_id = (await first.json())["queue_id"]
            path = f"/jingles/{queue_id}"
            early = await client.get(path)
            assert early.status == 202
            assert (await early.json())["state"] == "running"
            # The client comes back after the job's 60 s (again later if it is still
            # running: on a loaded machine scaled time can run ahead of the polls).
            for _ in range(4):
                await anyio.sleep(40.0 * scale)
                done = await client.get(path)
                if done.status == 200:
                    break
            assert done.status == 200
            audio = server.audio_for(queue_id)
            assert await done.read() == audio
            retrieves = server.count("retrieve")
            again = await client.get(path)  # the first answer was lost: the same worker
            assert again.status == 200
            assert await again.read() == audio
            assert server.count("retrieve") == retrieves  # its file, no request
            async with TestClient(TestServer(other)) as elsewhere:
                # Another worker, which never saw the job: it attaches and downloads it (a
                # 202 while that takes longer than the handler's 5 s of scaled time).
                for _ in range(20):
                    fetched = await elsewhere.get(path)
                    if fetched.status != 202:
                        break
                assert fetched.status == 200
                assert await fetched.read() == audio
                fetched = await elsewhere.get(path)  # and again there: its own file
                assert fetched.status == 200
                assert await fetched.read() == audio
                assert other[other_key].statistics().jobs_failed == 0
            assert app[key].statistics().jobs_failed == 0
            assert app[key].statistics().outcomes_untaken == 0
    assert server.count("queue") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_batch_to_a_folder(
    server: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The batch example writes 200 tracks into its folder, within its spending limit, and
    takes every outcome it printed."""
    monkeypatch.chdir(tmp_path)
    code = next(c for c in _blocks().values() if "generate_many" in c)
    printed: list[tuple[Any, ...]] = []
    names = _namespace(server, print=lambda *a: printed.append(a))
    await _run(code, names)
    assert len(list((tmp_path / "tracks").glob("*.flac"))) == 200
    assert server.count("queue") == 200
    assert len(printed) == 200
    assert server.count("complete") == 200
    (session,) = _user_view(names, caplog)
    assert session.statistics().jobs_succeeded == 200


async def test_bot(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    """The bot example reacts to its result."""
    sent: list[Any] = []

    class Chat:
        async def send_audio(self, data: bytes) -> None:
            sent.append(data)

        async def send(self, text: str) -> None:
            sent.append(text)

    code = next(c for c in _blocks().values() if "send_audio" in c)
    names = _namespace(server, chat=Chat())
    await _run(code, names)
    assert len(sent) == 2
    assert isinstance(sent[0], str)
    assert isinstance(sent[-1], bytes)
    assert server.count("complete") == 1
    _user_view(names, caplog)


async def test_testing_example(caplog: pytest.LogCaptureFixture) -> None:
    """The FakeServer example in "Testing your code" passes as written (it names its own
    key and URL), retrying the injected 503 without a warning."""
    code = next(c for c in _blocks().values() if "server.inject" in c)
    names: dict[str, Any] = {name: getattr(v, name) for name in v.__all__}
    names.update({"FakeServer": FakeServer, "JobScript": JobScript, "ScaledClock": ScaledClock})
    names["Fault"] = __import__("venice_audio_async.testing", fromlist=["Fault"]).Fault
    opened: list[v.AsyncSession] = []

    def session(*args: Any, **options: Any) -> v.AsyncSession:
        made = v.AsyncSession(*args, **options)
        opened.append(made)
        return made

    names["AsyncSession"] = session
    names[OPENED] = opened
    local = await _run(code, names)
    assert local["server"].count("retrieve") >= 2  # the 503, then the audio
    assert len(_user_view(names, caplog)) == 1


async def test_polling_bounds_example(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    """The "Polling" example's session, used as the web app it is for."""
    code = next(c for c in _blocks().values() if "PollingBounds(delay_per_poll" in c)
    names = _namespace(server)
    local = await _run(code, names)
    session: v.AsyncSession = local["session"]
    async with session:
        audio = await session.generate("stable-audio-25", "a quick one")
    (queue_id,) = server.queue_ids()
    assert audio.data == server.audio_for(queue_id)
    _user_view(names, caplog)


async def test_fake_server_limits_example(caplog: pytest.LogCaptureFixture) -> None:
    """The fake with an unstated pooled limit and the lockout: a session given that limit
    generates through it without a 429."""
    code = next(c for c in _blocks().values() if "pooled_rate_limit=60" in c)
    names: dict[str, Any] = {"FakeServer": FakeServer}
    local = await _run("fake = " + code.lstrip(), names)
    async with local["fake"] as server:
        names = _namespace(server)
        async with names["AsyncSession"](rate_limits=v.RateLimits(pooled_per_minute=60)) as session:
            await session.generate("stable-audio-25", "under the pooled limit")
        assert session.statistics().rate_limited == 0
        assert server.count("queue") == 1
    _user_view(names, caplog)


async def test_without_async_script(server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    """The "Without async" script runs as written: in a thread, as a script's main thread
    would (it blocks, so not on the loop serving the fake); eight threads share the client."""
    code = next(c for c in _blocks().values() if "with VeniceAudio() as client" in c)
    body = "\n".join(line for line in code.splitlines() if not line.startswith("from venice"))
    printed: list[tuple[object, ...]] = []
    names = _namespace(server, print=lambda *a: printed.append(a))
    scale = server.clock.scale if isinstance(server.clock, ScaledClock) else TIME_SCALE
    names["VeniceAudio"] = partial(
        v.VeniceAudio, api_key="k", base_url=server.url, clock=ScaledClock(scale)
    )
    await anyio.to_thread.run_sync(exec, compile(body, str(README), "exec"), names)
    assert len(names["sizes"]) == 8
    assert all(size > 0 for size in names["sizes"])
    assert len(printed) == 3
    assert server.count("queue") == 1 + 8 + 3
    assert server.count("complete") == 1 + 8 + 3  # every result taken and released
    _user_view(names, caplog)


async def test_notebook_session_without_async_with(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The notebook lines use one session across awaits, opened by the first, then closed."""
    code = next(c for c in _blocks().values() if "session = AsyncSession()" in c)
    names = _namespace(server)
    local = await _run(code, names)
    assert local["audio"].size > 0
    with pytest.raises(v.SessionStateError, match="closed"):
        await local["session"].models()
    assert server.count("queue") == 2
    _user_view(names, caplog)


async def test_many_processes_examples(redis_server: RedisServer) -> None:
    """The "Many processes" lines open a shared budget and learn the limits from the API."""
    blocks = [c for c in _blocks().values() if "RedisBudget.from_url" in c]
    assert len(blocks) == 2
    async with FakeServer(
        time_scale=TIME_SCALE, job_script=JobScript(duration=5.0), pooled_rate_limit=60
    ) as server:
        await _many_processes(server, redis_server, blocks)


async def _many_processes(server: FakeServer, redis_server: RedisServer, blocks: list[str]) -> None:
    names = _namespace(server)
    names["VeniceClient"] = partial(v.VeniceClient, api_key="k", base_url=server.url)
    clock = ScaledClock(TIME_SCALE)

    def from_url(url: str, **options: Any) -> RedisBudget:
        assert url == "redis://localhost:6379/0"
        return RedisBudget.from_url(redis_server.url, api_key="k", clock=clock, **options)

    names["RedisBudget"] = types.SimpleNamespace(from_url=from_url)
    names["print"] = lambda *a: None
    first = await _run(blocks[0], names)
    async with names["AsyncSession"](budget=first["budget"]) as session:
        await session.generate("stable-audio-25", "a short shared tune")
    assert first["budget"].statistics().granted >= 2
    learned = await _run(blocks[1], names)
    assert learned["learned"].pooled_per_minute == 60
    await learned["budget"].aclose()


async def _run_self_contained(marker: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """Run the docs example holding ``marker``, which starts its own fake server; what the
    user sees afterwards: no warning, nothing left untaken."""
    code = next(c for c in _blocks().values() if marker in c)
    names: dict[str, Any] = {name: getattr(v, name) for name in v.__all__}
    names.update({"FakeServer": FakeServer, "ScaledClock": ScaledClock})
    opened: list[v.AsyncSession] = []

    def session(*args: Any, **options: Any) -> v.AsyncSession:
        made = v.AsyncSession(*args, **options)
        opened.append(made)
        return made

    names["AsyncSession"] = session
    names[OPENED] = opened
    local = await _run(code, names)
    assert len(_user_view(names, caplog)) == 1
    return local


async def test_with_options_example(caplog: pytest.LogCaptureFixture) -> None:
    """The with_options example of "Sessions": two views of one session, the second's job
    deleted on retrieve (no complete for it), the first's released with complete."""
    local = await _run_self_contained("session.with_options(", caplog)
    server: FakeServer = local["server"]
    flags = [
        r.body.get("delete_media_on_completion") for r in server.requests_to("retrieve") if r.body
    ]
    assert True in flags
    assert server.count("complete") == 1


async def test_extra_body_example(caplog: pytest.LogCaptureFixture) -> None:
    """The extra_body example of "Sessions": the field is sent as given and accepted."""
    caplog.set_level(logging.INFO, logger="venice_audio_async")
    local = await _run_self_contained("accept_extra_fields=", caplog)
    assert local["server"].requests_to("queue")[0].status == 200
