"""The fake server's job mix and its command line options for out-of-process benchmarks."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

import venice_audio_async.testing as testing
from venice_audio_async._core.clock import ManualClock
from venice_audio_async.testing import FakeServer, JobMix, JobScript, ModelTiming
from venice_audio_async.testing.__main__ import main

AUTH = {"Authorization": "Bearer test-key"}
PACKAGE_ROOT = Path(testing.__file__).resolve().parents[2]  # holds venice_audio_async/
BODY = {"model": "stable-audio-25", "prompt": "Warm cinematic strings", "duration_seconds": 30}


# --- JobMix -----------------------------------------------------------------------------


def test_model_timing_p80_and_mean() -> None:
    """The reported estimate is the P80 of the lognormal whose mean is ``mean``."""
    timing = ModelTiming(40.0, 0.2)
    assert math.isclose(math.exp(timing.mu + timing.sigma**2 / 2), 40.0)
    assert math.isclose(timing.p80, math.exp(timing.mu + 0.2 * 0.8416212335729143))
    assert ModelTiming(30.0, 0.0).p80 == pytest.approx(30.0)
    with pytest.raises(ValueError, match="mean"):
        ModelTiming(0.0)
    with pytest.raises(ValueError, match="sigma"):
        ModelTiming(10.0, -0.1)


def test_job_mix_is_reproducible_and_spread() -> None:
    """Same seed and body, same run time; run times spread around the model's mean."""
    mix = JobMix({"stable-audio-25": ModelTiming(30.0, 0.15)}, seed=3)
    again = JobMix({"stable-audio-25": ModelTiming(30.0, 0.15)}, seed=3)
    other_seed = JobMix({"stable-audio-25": ModelTiming(30.0, 0.15)}, seed=4)
    bodies = [{**BODY, "prompt": f"track number {i}"} for i in range(2000)]
    durations = [mix.duration_for(body) for body in bodies]
    assert durations == [again.duration_for(body) for body in bodies]
    assert durations != [other_seed.duration_for(body) for body in bodies]
    assert statistics.fmean(durations) == pytest.approx(30.0, rel=0.02)
    assert statistics.stdev(math.log(d) for d in durations) == pytest.approx(0.15, rel=0.1)
    share_below_p80 = sum(d <= mix.timings["stable-audio-25"].p80 for d in durations) / 2000
    assert share_below_p80 == pytest.approx(0.8, abs=0.03)
    script = mix(bodies[0])
    assert script.average_execution_time == pytest.approx(mix.timings["stable-audio-25"].p80)


def test_job_mix_default_and_audio_size() -> None:
    """Unlisted models follow ``default``; ``audio_size`` is validated at once."""
    default = JobScript(duration=7.0)
    mix = JobMix({"stable-audio-25": ModelTiming(30.0)}, default=default, audio_size=5000)
    assert mix({"model": "elevenlabs-music", "prompt": "x"}) is default
    assert mix(BODY).audio_size == 5000
    with pytest.raises(ValueError, match="audio_size"):
        JobMix({}, audio_size=10)


@pytest.mark.anyio
async def test_job_mix_drives_the_server(http_session: aiohttp.ClientSession) -> None:
    """As ``job_script``, the mix sets each job's duration and the reported P80."""
    mix = JobMix({"stable-audio-25": ModelTiming(30.0, 0.3)}, seed=1)
    async with FakeServer(clock=ManualClock(), job_script=mix) as server:
        async with http_session.post(f"{server.url}/audio/queue", json=BODY, headers=AUTH) as reply:
            queue_id = (await reply.json())["queue_id"]
        job = server.jobs[queue_id]
        assert job.script.duration == pytest.approx(mix.duration_for(BODY))
        body = {"model": BODY["model"], "queue_id": queue_id}
        async with http_session.post(
            f"{server.url}/audio/retrieve", json=body, headers=AUTH
        ) as reply:
            status = await reply.json()
        assert status["average_execution_time"] == round(mix.timings["stable-audio-25"].p80 * 1000)


# --- command line -----------------------------------------------------------------------


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --job-mix or a too small --audio-size is an error, not a server."""
    with pytest.raises(SystemExit):
        main(["--job-mix", "stable-audio-25=fast"])
    with pytest.raises(SystemExit):
        main(["--job-mix", "stable-audio-25=-3"])
    assert main(["--audio-size", "3"]) == 2
    assert "audio_size" in capsys.readouterr().err


@pytest.mark.anyio
async def test_cli_mix_and_record(http_session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """--job-mix/--seed/--audio-size shape the jobs; --record writes them on shutdown."""
    record = tmp_path / "record.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "venice_audio_async.testing",
        "--port",
        "0",
        "--time-scale",
        "0.001",
        "--job-mix",
        "stable-audio-25=30:0.2",
        "--seed",
        "5",
        "--audio-size",
        "4096",
        "--rate-limit",
        "retrieve=1",
        "--record",
        str(record),
    ]
    async with await anyio.open_process(command, env=env) as process:
        assert process.stdout is not None
        buffer = b""
        with anyio.fail_after(20):
            while b"\n" not in buffer:
                buffer += await process.stdout.receive()
        url = buffer.split(b"\n", 1)[0].decode()
        async with http_session.post(f"{url}/audio/queue", json=BODY, headers=AUTH) as reply:
            queue_id = (await reply.json())["queue_id"]
        body = {"model": BODY["model"], "queue_id": queue_id}
        statuses = []
        for _ in range(2):
            async with http_session.post(f"{url}/audio/retrieve", json=body, headers=AUTH) as reply:
                statuses.append(reply.status)
        assert statuses == [200, 429]
        process.terminate()
        with anyio.fail_after(10):
            assert await process.wait() == 0
    data: dict[str, Any] = json.loads(record.read_text())
    mix = JobMix({"stable-audio-25": ModelTiming(30.0, 0.2)}, seed=5)
    (job,) = data["jobs"]
    assert job["queue_id"] == queue_id
    assert job["duration"] == pytest.approx(mix.duration_for(BODY))
    assert job["estimate"] == pytest.approx(mix.timings["stable-audio-25"].p80)
    assert job["finishes_at"] == pytest.approx(job["queued_at"] + job["duration"])
    assert job["retrieve_count"] == 1
    retrieves = [r for r in data["requests"] if r["endpoint"] == "retrieve"]
    assert [(r["status"], r["queue_id"]) for r in retrieves] == [
        (200, queue_id),
        (429, queue_id),
    ]
    assert retrieves[1]["fault"] == "rate_limit"
    assert retrieves[0]["retry_after"] is None
    assert 0 < retrieves[1]["retry_after"] <= 60  # what frees the slot, whole seconds
    assert data["lockouts"] == []
    assert not list(tmp_path.glob(".*.part"))
