"""The README's Python examples run as written, against the fake server."""

from __future__ import annotations

import json
import re
import textwrap
import types
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, JobScript

from .conftest import TIME_SCALE
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

README = Path(__file__).parent.parent / "README.md"


def _blocks() -> dict[str, str]:
    """Python blocks keyed by the line of prose just before them."""
    text = README.read_text()
    found = {}
    for match in re.finditer(r"\n([^\n]*)\n\n```python\n(.*?)```", text, re.S):
        found[match.group(1).strip()] = match.group(2)
    return found


def _namespace(server: FakeServer, **extra: Any) -> dict[str, Any]:
    scale = server.clock.scale if isinstance(server.clock, v.ScaledClock) else TIME_SCALE
    session = partial(v.AsyncSession, api_key="k", base_url=server.url, clock=v.ScaledClock(scale))
    names: dict[str, Any] = {name: getattr(v, name) for name in v.__all__}
    names["AsyncSession"] = session
    names.update(extra)
    return names


async def _run(code: str, names: dict[str, Any]) -> dict[str, Any]:
    body = "\n".join(
        line for line in code.splitlines() if not line.startswith(("from venice", "import asyncio"))
    ).replace("asyncio.run(main())", "await main()")
    source = "async def __snippet__():\n" + textwrap.indent(body, "    ") + "\n    return locals()"
    exec(compile(source, str(README), "exec"), names)  # our own README
    result: dict[str, Any] = await names["__snippet__"]()
    return result


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A fast fake server for the examples."""
    async with FakeServer(time_scale=TIME_SCALE, job_script=JobScript(duration=5.0)) as fake:
        yield fake


def test_examples_are_found() -> None:
    """The examples this module runs are still in the README."""
    keys = " ".join(_blocks())
    for words in (
        "first generation",
        "web handler",
        "batch of many tracks",
        "bot",
        "Testing",
        "Without async",
    ):
        assert words.lower() in keys.lower() or words in README.read_text(), words


async def test_first_generation(server: FakeServer) -> None:
    """The first example generates one track."""
    code = next(c for k, c in _blocks().items() if "asyncio.run(main())" in c)
    await _run(code, _namespace(server))
    assert server.count("queue") == 1


async def test_web_handler() -> None:
    """The web handler example answers with the audio."""
    code = next(c for c in _blocks().values() if "make_jingle" in c)
    # The job's 5 s against the handler's 20 s timeout: 150 ms of real time to spare at this
    # scale (15 ms at TIME_SCALE, which a loaded machine used up: a 202).
    async with FakeServer(time_scale=0.01, job_script=JobScript(duration=5.0)) as server:
        names = _namespace(server)
        async with names["AsyncSession"]() as session:
            local = await _run(code, names)
            request = types.SimpleNamespace(app={"venice": session})
            response = await local["make_jingle"](request)
    assert response.status == 200
    assert response.body


async def test_web_handler_come_back_later(server: FakeServer) -> None:
    """A job outliving the handler's timeout is a 202, and fetched when the client returns."""
    code = next(c for c in _blocks().values() if "make_jingle" in c)
    server.plan(JobScript(duration=60.0))
    names = _namespace(server)
    async with names["AsyncSession"]() as session:
        local = await _run(code, names)
        app = {"venice": session}
        first = await local["make_jingle"](types.SimpleNamespace(app=app))
        assert first.status == 202
        queue_id = json.loads(first.body)["queue_id"]
        back = types.SimpleNamespace(app=app, match_info={"queue_id": queue_id})
        early = await local["fetch_jingle"](back)
        assert early.status == 202
        assert json.loads(early.body)["state"] == "running"
        # The client comes back after the job's 60 s (again later if it is still running:
        # on a loaded machine scaled time can run ahead of the polls).
        for _ in range(4):
            await session._parts.clock.sleep(40.0)
            done = await local["fetch_jingle"](back)
            if done.status == 200:
                break
    assert done.status == 200
    assert done.body == server.audio_for(queue_id)
    assert server.count("queue") == 1


async def test_batch_to_a_folder(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch example writes 200 tracks into its folder, within its spending limit."""
    monkeypatch.chdir(tmp_path)
    code = next(c for c in _blocks().values() if "generate_many" in c)
    await _run(code, _namespace(server, print=lambda *a: None))
    assert len(list((tmp_path / "tracks").glob("*.flac"))) == 200
    assert server.count("queue") == 200


async def test_bot(server: FakeServer) -> None:
    """The bot example reacts to its result."""
    sent: list[Any] = []

    class Chat:
        async def send_audio(self, data: bytes) -> None:
            sent.append(data)

        async def send(self, text: str) -> None:
            sent.append(text)

    code = next(c for c in _blocks().values() if "send_audio" in c)
    await _run(code, _namespace(server, chat=Chat()))
    assert len(sent) == 2
    assert isinstance(sent[0], str)
    assert isinstance(sent[-1], bytes)


async def test_testing_example() -> None:
    """The FakeServer example in "Testing your code" passes."""
    code = next(c for c in _blocks().values() if "server.inject" in c)
    names = {name: getattr(v, name) for name in v.__all__}
    names.update({"FakeServer": FakeServer, "JobScript": JobScript})
    names["Fault"] = __import__("venice_audio_async.testing", fromlist=["Fault"]).Fault
    await _run(code, names)


async def test_without_async_script(server: FakeServer) -> None:
    """The "Without async" script runs as written: in a thread, as a script's main thread
    would (it blocks, so not on the loop serving the fake); eight threads share the client."""
    code = next(c for c in _blocks().values() if "with VeniceAudio() as client" in c)
    body = "\n".join(line for line in code.splitlines() if not line.startswith("from venice"))
    printed: list[tuple[object, ...]] = []
    names = _namespace(server, print=lambda *a: printed.append(a))
    scale = server.clock.scale if isinstance(server.clock, v.ScaledClock) else TIME_SCALE
    names["VeniceAudio"] = partial(
        v.VeniceAudio, api_key="k", base_url=server.url, clock=v.ScaledClock(scale)
    )
    await anyio.to_thread.run_sync(exec, compile(body, str(README), "exec"), names)
    assert len(names["sizes"]) == 8
    assert all(size > 0 for size in names["sizes"])
    assert len(printed) == 3
    assert server.count("queue") == 1 + 8 + 3


async def test_notebook_session_without_async_with(server: FakeServer) -> None:
    """The notebook lines use one session across awaits, opened by the first, then closed."""
    code = next(c for c in _blocks().values() if "session = AsyncSession()" in c)
    local = await _run(code, _namespace(server))
    assert local["audio"].size > 0
    with pytest.raises(v.SessionStateError, match="closed"):
        await local["session"].models()
    assert server.count("queue") == 2


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
    clock = v.ScaledClock(TIME_SCALE)

    def from_url(url: str, **options: Any) -> v.RedisBudget:
        assert url == "redis://localhost:6379/0"
        return v.RedisBudget.from_url(redis_server.url, api_key="k", clock=clock, **options)

    names["RedisBudget"] = types.SimpleNamespace(from_url=from_url)
    names["print"] = lambda *a: None
    first = await _run(blocks[0], names)
    async with names["AsyncSession"](budget=first["budget"]) as session:
        await session.generate("stable-audio-25", "a short shared tune")
    assert first["budget"].statistics().granted >= 2
    learned = await _run(blocks[1], names)
    assert learned["learned"].pooled_per_minute == 60
    await learned["budget"].aclose()
