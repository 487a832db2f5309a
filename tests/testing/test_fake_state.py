"""The fake for newcomers: playable WAV tones, and jobs that outlive the server's process."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async._core.clock import ManualClock
from venice_audio_async.testing import FakeServer, JobScript
from venice_audio_async.testing._tones import iter_tone, tone_size

from ..conftest import API_KEY, TIME_SCALE, UNLIMITED, make_client, make_session

pytestmark = pytest.mark.anyio


def _wav(data: bytes) -> tuple[float, int, int, int]:
    """(seconds, sample rate, sample width, channels) of a WAV file."""
    with wave.open(io.BytesIO(data)) as reader:
        rate = reader.getframerate()
        return reader.getnframes() / rate, rate, reader.getsampwidth(), reader.getnchannels()


async def test_tones_are_playable_wavs_of_the_requested_length() -> None:
    """With audio="tones" every job is a 16-bit mono 16 kHz WAV as long as it asked."""
    async with (
        FakeServer(time_scale=TIME_SCALE, audio="tones", job_script=JobScript(duration=2)) as fake,
        make_session(fake, rate_limits=UNLIMITED) as session,
    ):
        audio = await session.generate("stable-audio-25", "rain on a tin roof", duration_seconds=7)
        music = await session.generate("elevenlabs-music", "a waltz for a music box")
        voice = await session.generate("elevenlabs-tts-v3", "Hello from the fake server.")
    assert audio.content_type == "audio/wav"
    assert audio.format == "wav"
    assert audio.data is not None
    assert _wav(audio.data) == (7.0, 16_000, 2, 1)
    assert music.format == "wav"  # elevenlabs-music makes mp3, but the tones are WAV
    assert music.data is not None
    assert _wav(music.data)[0] == 60.0  # the model's default duration
    assert voice.data is not None
    assert _wav(voice.data)[0] == 10.0  # no duration anywhere: the default
    assert audio.data == fake.audio_for(fake.queue_ids()[0])
    samples = memoryview(audio.data[44:]).cast("h")
    assert max(samples) > 5000  # a sound, not silence


def test_tone_chunks_add_up_to_the_file() -> None:
    """A tone streamed in any chunk size is the same file, of the announced size."""
    whole = b"".join(iter_tone(1.5, seed="job"))
    assert len(whole) == tone_size(1.5)
    assert b"".join(iter_tone(1.5, seed="job", chunk_size=7)) == whole
    assert all(len(chunk) <= 7 for chunk in iter_tone(1.5, seed="job", chunk_size=7))
    assert b"".join(iter_tone(1.5, seed="other")) != whole  # another job, another pitch


async def test_strict_bytes_stay_the_default() -> None:
    """Without audio="tones" the fake still sends each model's container, 1 KiB long."""
    async with (
        FakeServer(time_scale=TIME_SCALE, job_script=JobScript(duration=2)) as fake,
        make_session(fake, rate_limits=UNLIMITED) as session,
    ):
        audio = await session.generate("elevenlabs-music", "a waltz for a music box")
    assert (audio.format, audio.size, audio.content_type) == ("mp3", 1024, "audio/mpeg")


async def test_a_second_server_knows_the_first_ones_jobs(tmp_path: Path) -> None:
    """Jobs queued on a server with a state file are known to the next server using it."""
    state = tmp_path / "fake-state.jsonl"
    script = JobScript(duration=50.0)
    async with (
        FakeServer(time_scale=TIME_SCALE, state_path=state, job_script=script) as first,
        make_client(first) as client,
    ):
        running = await client.queue(v.QueueRequest("stable-audio-25", "a job that waits"))
        done = await client.queue(v.QueueRequest("stable-audio-25", "a job to release"))
    async with FakeServer(time_scale=TIME_SCALE, state_path=state, audio="tones") as second:
        assert second.queue_ids() == [running.queue_id, done.queue_id]
        async with make_session(second, rate_limits=UNLIMITED) as session:
            attached = session.attach(running.model, running.queue_id)
            audio = await session.wait_for(attached)
    # Restored jobs keep their own audio kind (strict bytes), whatever the new server's.
    assert audio.data == second.audio_for(running.queue_id)
    assert audio.format == "wav"
    async with FakeServer(time_scale=TIME_SCALE, state_path=state) as third:
        assert third.jobs[running.queue_id].released  # the session released it on the second
        assert not third.jobs[done.queue_id].released


async def test_queue_times_survive_across_clocks(tmp_path: Path) -> None:
    """A restored job is as old on the new server's clock as it was on the old one's."""
    state = tmp_path / "state.jsonl"
    old_clock = ManualClock(start=100.0, epoch=1_800_000_000.0)
    async with (
        FakeServer(clock=old_clock, state_path=state, api_keys=[API_KEY]) as old,
        make_client(old) as client,
    ):
        job = await client.queue(v.QueueRequest("stable-audio-25", "a job to carry over"))
    # 25 s later, on a clock with another origin.
    new_clock = ManualClock(start=7.0, epoch=1_800_000_025.0)
    async with FakeServer(clock=new_clock, state_path=state, api_keys=["another-key"]) as new:
        restored = new.jobs[job.queue_id]
        assert new_clock.monotonic() - restored.queued_at == pytest.approx(25.0)
        assert restored.credential is None  # never stored; any accepted key may retrieve
        assert restored.script == old.jobs[job.queue_id].script
    assert API_KEY not in state.read_text()


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A line cut short by a killed process is ignored; the lines before it are kept."""
    state = tmp_path / "state.jsonl"
    async with (
        FakeServer(time_scale=TIME_SCALE, state_path=state) as first,
        make_client(first) as client,
    ):
        job = await client.queue(v.QueueRequest("stable-audio-25", "kept across a crash"))
    line = json.loads(state.read_text().splitlines()[0])
    state.write_text(state.read_text() + json.dumps({**line, "queue_id": "x"})[:40])
    async with FakeServer(time_scale=TIME_SCALE, state_path=state) as second:
        assert second.queue_ids() == [job.queue_id]


def test_unknown_audio_kind_is_refused() -> None:
    """audio= takes "bytes" or "tones" only."""
    with pytest.raises(ValueError, match="audio must be"):
        FakeServer(audio="noise")  # type: ignore[arg-type]
