"""The command line: batch, resume, spending limits and bad input, in real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from venice_audio_async._cli import main
from venice_audio_async._cli.exits import ExitCode
from venice_audio_async._rate.redis_budget import namespace_for_key
from venice_audio_async.testing import FakeServer, Fault, JobScript

from ..conftest import API_KEY
from ..redis_server import RedisServer

CLI_SCALE = 0.02  # the subprocess and the fake must agree on the clock


def _lines(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _track(i: int) -> dict[str, Any]:
    return {
        "model": "stable-audio-25",
        "prompt": f"ambient texture number {i:02d}",
        "duration_seconds": 10,
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["VENICE_API_KEY"] = API_KEY
    return env


def _cli(server: FakeServer, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "venice_audio_async",
        *args,
        "--base-url",
        server.url,
        "--time-scale",
        str(CLI_SCALE),
        "--plain",
    ]


async def _run(server: FakeServer, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(_cli(server, *args), env=_env(), check=False)


def _manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _created(server: FakeServer) -> list[str]:
    """The queue ids of the jobs the fake created."""
    return server.queue_ids()


def _script(body: Mapping[str, Any]) -> JobScript:
    return JobScript(duration=20.0 + len(str(body.get("prompt"))) % 7, average_execution_time=25.0)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A fake server on the CLI's time scale, with the real rate limits."""
    async with FakeServer(
        time_scale=CLI_SCALE,
        api_keys=[API_KEY],
        rate_limits={"queue": 40, "retrieve": 120},
        job_script=_script,
    ) as fake:
        yield fake


def test_main_job_runs_on_the_fake(tmp_path: Path) -> None:
    """The README's main job: the example batch against --fake makes every file."""
    examples = Path(__file__).parents[2] / "examples" / "tracks.jsonl"
    out = tmp_path / "out"
    assert main(["batch", str(examples), "--out", str(out), "--fake", "--plain"]) == 0
    rows = _manifest(out)
    assert len(rows) == len(examples.read_text().splitlines())
    for row in rows:
        assert row["state"] == "succeeded"
        assert (out / row["file"]).stat().st_size == row["bytes"] > 0


def test_no_key_explains_how_to_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a key and without --fake, the command says how to set VENICE_API_KEY."""
    monkeypatch.delenv("VENICE_API_KEY", raising=False)
    batch = _lines(tmp_path / "b.jsonl", [_track(1)])
    assert main(["batch", str(batch), "--out", str(tmp_path / "out")]) == ExitCode.AUTHENTICATION
    assert "VENICE_API_KEY" in capsys.readouterr().err


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    """models prints one row per model with its price shape."""
    assert main(["models", "--fake"]) == 0
    out = capsys.readouterr().out
    assert "elevenlabs-music" in out
    assert "per 1k chars" in out
    assert len(out.splitlines()) == 2 + 10


def test_a_closed_output_pipe_stops_quietly() -> None:
    """`venice-audio models | head`: the reader leaving ends the command with 141 (as a
    shell reports SIGPIPE) and no traceback."""
    command = [sys.executable, "-m", "venice_audio_async", "models", "--fake"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()  # the reader is gone before the first line is written
        errors = process.stderr.read().decode()
        assert process.wait(timeout=60) == 141
    assert "Traceback" not in errors, errors


def test_quote(capsys: pytest.CaptureFixture[str]) -> None:
    """quote prints a price."""
    assert main(["quote", "elevenlabs-music", "--duration", "60", "--fake"]) == 0
    assert capsys.readouterr().out.strip() == "$0.8700"


pytestmark_async = pytest.mark.anyio


@pytestmark_async
async def test_invalid_batch_lists_every_problem_and_sends_nothing(
    server: FakeServer, tmp_path: Path
) -> None:
    """Bad JSON, unknown fields, an unknown model and broken rules: one round, by line."""
    rows = [json.dumps(_track(i)) for i in range(1, 20)]
    rows[2] = "{not json"
    rows[4] = json.dumps({**_track(5), "colour": "red", "duration_seconds": 500})
    rows[6] = json.dumps({"model": "no-such-model", "prompt": "a perfectly fine prompt"})
    rows[16] = json.dumps({**_track(17), "force_instrumental": True})
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(rows) + "\n")
    result = await _run(server, "batch", str(batch), "--out", str(tmp_path / "out"))
    err = result.stderr.decode()
    assert result.returncode == ExitCode.INVALID_INPUT, err
    listed = [line.strip() for line in err.splitlines() if line.startswith("  line ")]
    assert [line.split(":")[0] for line in listed] == [
        "line 3",
        "line 5",
        "line 5",
        "line 7",
        "line 17",
    ], err
    assert listed[0].startswith("line 3: invalid JSON")
    assert "line 5: unknown field(s) colour" in listed
    assert listed[2].startswith("line 5: duration_seconds: must be between")
    assert "line 7: model: unknown model 'no-such-model'" in listed
    assert listed[4].startswith("line 17: force_instrumental")
    assert "5 problem(s); nothing was sent" in err
    assert server.count("queue") == 0
    assert server.count("quote") == 0


@pytestmark_async
async def test_csv_batch(server: FakeServer, tmp_path: Path) -> None:
    """A CSV batch with a header row works like JSON Lines."""
    batch = tmp_path / "batch.csv"
    batch.write_text(
        "model,prompt,duration_seconds\n"
        "stable-audio-25,a quiet night in the desert,12\n"
        "stable-audio-25,waves on a pebble beach,8\n"
    )
    out = tmp_path / "out"
    result = await _run(server, "batch", str(batch), "--out", str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert [r["state"] for r in _manifest(out)] == ["succeeded", "succeeded"]
    assert [r.body["duration_seconds"] for r in server.requests_to("queue")] == [12, 8]


@pytestmark_async
async def test_estimate_over_max_spend_stops_before_spending(
    server: FakeServer, tmp_path: Path
) -> None:
    """A batch whose estimate exceeds --max-spend sends no queue request."""
    batch = _lines(tmp_path / "b.jsonl", [_track(i) for i in range(5)])  # 5 x $0.24
    result = await _run(
        server, "batch", str(batch), "--out", str(tmp_path / "o"), "--max-spend", "1"
    )
    assert result.returncode == 3, result.stderr.decode()
    assert "exceeds --max-spend" in result.stderr.decode()
    assert "nothing was spent" in result.stderr.decode()
    assert server.count("queue") == 0


@pytestmark_async
async def test_limit_reached_mid_way_stops_queueing(server: FakeServer, tmp_path: Path) -> None:
    """When queueing reaches the limit mid-way (a resumed folder), it stops and says so."""
    out = tmp_path / "o"
    first = _lines(tmp_path / "a.jsonl", [_track(i) for i in range(3)])
    assert (await _run(server, "batch", str(first), "--out", str(out))).returncode == 0
    more = _lines(tmp_path / "b.jsonl", [_track(i) for i in range(6)])
    result = await _run(server, "batch", str(more), "--out", str(out), "--max-spend", "1.0")
    err = result.stderr.decode()
    # 0.72 spent; line 4 fits (0.96), line 5 would not: queueing stops there, and says so.
    assert result.returncode == 3, err
    assert "spending limit reached" in err
    assert "2 line(s) not queued" in err
    assert server.count("queue") == 4


@pytestmark_async
async def test_lost_queue_answer_is_reported_and_not_requeued(
    server: FakeServer, tmp_path: Path
) -> None:
    """A dropped queue answer is recorded unknown; resume does not re-queue it by default."""
    out = tmp_path / "o"
    batch = _lines(tmp_path / "b.jsonl", [_track(i) for i in range(3)])
    server.inject("queue", Fault.drop())
    result = await _run(server, "batch", str(batch), "--out", str(out))
    assert result.returncode == 1
    states = [r["state"] for r in _manifest(out)]
    assert sorted(states) == ["succeeded", "succeeded", "unknown"]
    assert server.count("queue") == 3

    result = await _run(server, "resume", str(out))
    assert "queue answer was lost" in result.stderr.decode()
    assert server.count("queue") == 3

    result = await _run(server, "resume", str(out), "--requeue-unknown")
    assert result.returncode == 0, result.stderr.decode()
    assert server.count("queue") == 4
    assert [r["state"] for r in _manifest(out)] == ["succeeded"] * 3


@pytestmark_async
async def test_sigkill_mid_batch_then_resume_loses_and_repeats_nothing(
    server: FakeServer, tmp_path: Path
) -> None:
    """Kill -9 half-way, resume: 50 files, exactly 50 queue calls, a manifest of 50."""
    out = tmp_path / "out"
    batch = _lines(tmp_path / "batch.jsonl", [_track(i) for i in range(50)])
    process = await anyio.open_process(
        _cli(server, "batch", str(batch), "--out", str(out)), env=_env()
    )
    try:
        # Once 20 queue calls are answered, a 429 on a poll pauses the whole client (queue
        # calls wait for their token unclaimed); once the calls sent before it are answered
        # it is killed, between two of them. (A kill during a queue call would leave that
        # line "unknown", rightly never re-sent by resume.)
        with anyio.fail_after(30):
            while sum(1 for r in server.requests_to("queue") if r.status) < 20:
                await anyio.sleep(0.001)
            server.inject("retrieve", Fault.status(429, retry_after=600))
            while server.pending_faults("retrieve"):
                await anyio.sleep(0.001)
            await anyio.sleep(0.1)
            while any(r.status == 0 for r in server.requests_to("queue")):
                await anyio.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        await process.aclose()
    queued_before = len(_created(server))
    assert 20 <= queued_before < 50

    result = await _run(server, "resume", str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert len(_created(server)) == 50
    rows = _manifest(out)
    assert [r["line"] for r in rows] == list(range(1, 51))
    assert all(r["state"] == "succeeded" for r in rows)
    audio = sorted(p.name for p in out.iterdir() if p.suffix == ".wav")
    assert len(audio) == 50
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    for row in rows:
        assert (out / row["file"]).read_bytes() == server.audio_for(row["queue_id"])

    again = await _run(server, "resume", str(out))
    assert again.returncode == 0
    assert len(_created(server)) == 50


@pytestmark_async
async def test_ctrl_c_stops_cleanly_and_says_how_to_resume(
    server: FakeServer, tmp_path: Path
) -> None:
    """SIGINT mid-batch exits 130 with the resume command; resume then finishes the rest."""
    out = tmp_path / "out"
    batch = _lines(tmp_path / "batch.jsonl", [_track(i) for i in range(20)])
    process = await anyio.open_process(
        _cli(server, "batch", str(batch), "--out", str(out)), env=_env()
    )
    try:
        with anyio.fail_after(30):
            while sum(1 for r in server.requests_to("queue") if r.status) < 8:
                await anyio.sleep(0.001)
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            code = await process.wait()
        assert process.stderr is not None
        chunks = []
        async for chunk in process.stderr:
            chunks.append(chunk)
        err = b"".join(chunks).decode()
    finally:
        await process.aclose()
    assert code == 130
    assert f"venice-audio resume {out}" in err
    assert (out / "manifest.jsonl").exists()  # written on the way out

    result = await _run(server, "resume", str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert server.count("queue") == 20
    assert [r["state"] for r in _manifest(out)] == ["succeeded"] * 20


def test_invalid_generate_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A request that breaks the model's rules exits 4 with the problem, no traceback."""
    assert main(["generate", "stable-audio-25", "short", "--fake"]) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert "prompt: must be at least 10 characters" in err
    assert "Traceback" not in err


@pytestmark_async
async def test_batch_and_generate_share_a_redis_budget(
    server: FakeServer, tmp_path: Path, redis_server: RedisServer
) -> None:
    """--redis (and VENICE_REDIS_URL) put the CLI's requests in the shared Redis budget."""
    import redis.asyncio

    batch = _lines(tmp_path / "batch.jsonl", [_track(i) for i in range(3)])
    out = tmp_path / "out"
    result = await _run(server, "batch", str(batch), "--out", str(out), "--redis", redis_server.url)
    assert result.returncode == 0, result.stderr.decode()
    env = {**_env(), "VENICE_REDIS_URL": redis_server.url}
    command = _cli(server, "generate", "stable-audio-25", "a lone bell at dusk", "--out", str(out))
    generated = await anyio.run_process(command, env=env, check=False)
    assert generated.returncode == 0, generated.stderr.decode()
    client = redis.asyncio.Redis.from_url(redis_server.url)
    granted = await client.hget(f"venice-audio:{{{namespace_for_key(API_KEY)}}}:session", "granted")
    await client.aclose()
    # 4 queues, their polls and releases, and the warm-up catalogue call went through Redis
    assert granted is not None
    assert int(granted) >= 4 + 4 + 4
