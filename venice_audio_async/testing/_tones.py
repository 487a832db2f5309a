"""Playable audio for the fake server: WAV sine tones of the requested length.

``FakeServer(audio="tones")`` (what the command line's ``--fake`` uses) answers a finished job
with a real sound instead of the strict byte-level files of :mod:`._audio`: a 16-bit mono
16 kHz PCM WAV holding a sine tone of a few hundred hertz (chosen by the queue id, so two
jobs sound different), faded in and out, as long as the request's ``duration_seconds`` (else
the model's default duration, else :data:`DEFAULT_TONE_SECONDS`).

One period of the tone divides the sample rate exactly, so the body is a precomputed period
repeated: a 3-minute file costs no per-sample work, and the same job always gives the same
bytes (:meth:`FakeServer.audio_for` can compare).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "DEFAULT_TONE_SECONDS",
    "SAMPLE_RATE",
    "iter_tone",
    "tone_seconds",
    "tone_size",
]

#: Samples per second of every tone.
SAMPLE_RATE = 16_000
#: Length of a tone when neither the request nor the model names a duration.
DEFAULT_TONE_SECONDS = 10.0
#: Samples per period: 500, 400, 320, 250 and 200 Hz at 16 kHz.
_PERIODS = (32, 40, 50, 64, 80)
_AMPLITUDE = 0.3 * 32767
_FADE = SAMPLE_RATE // 50  # 20 ms in and out, so the file starts and ends without a click
_HEADER = 44
_BYTES_PER_SAMPLE = 2


def tone_seconds(body: Mapping[str, Any], row: Mapping[str, Any]) -> float:
    """How long the tone for a queue request is: its duration, the model's, or a default."""
    for value in (body.get("duration_seconds"), row.get("model_spec", {}).get("default_duration")):
        if value is None or isinstance(value, bool):
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    return DEFAULT_TONE_SECONDS


def _samples(seconds: float) -> int:
    return max(1, round(seconds * SAMPLE_RATE))


def tone_size(seconds: float) -> int:
    """Bytes of the WAV file of a tone lasting ``seconds``."""
    return _HEADER + _samples(seconds) * _BYTES_PER_SAMPLE


def _header(samples: int) -> bytes:
    data = samples * _BYTES_PER_SAMPLE
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        1,  # mono
        SAMPLE_RATE,
        SAMPLE_RATE * _BYTES_PER_SAMPLE,  # byte rate
        _BYTES_PER_SAMPLE,  # block align
        8 * _BYTES_PER_SAMPLE,  # bits per sample
        b"data",
        data,
    )


def _period(seed: str) -> int:
    return _PERIODS[hashlib.sha256(seed.encode()).digest()[0] % len(_PERIODS)]


def _pcm(samples: range, period: int, total: int | None) -> bytes:
    """Samples ``samples`` of the tone, faded at both ends of ``total`` (``None``: no fade)."""
    values = []
    for index in samples:
        gain = 1.0 if total is None else min(1.0, index / _FADE, (total - 1 - index) / _FADE)
        values.append(round(_AMPLITUDE * gain * math.sin(2 * math.pi * index / period)))
    return struct.pack(f"<{len(values)}h", *values)


def iter_tone(seconds: float, *, seed: str = "", chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """Yield the WAV file of a tone lasting ``seconds``, in chunks of at most ``chunk_size``.

    Raises:
        ValueError: ``chunk_size < 1``.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    total = _samples(seconds)
    period = _period(seed)
    yield from _split(_header(total), chunk_size)
    fade = min(_FADE, total // 2)
    if total <= 2 * fade:
        yield from _split(_pcm(range(total), period, total), chunk_size)
        return
    yield from _split(_pcm(range(fade), period, total), chunk_size)
    # The middle: whole periods from a period boundary, then the rest up to the fade out.
    start = -(-fade // period) * period
    yield from _split(_pcm(range(fade, start), period, total), chunk_size)
    end = total - fade
    one = _pcm(range(period), period, None)  # a period at full gain
    per_chunk = max(1, chunk_size // len(one))
    position = start
    while position + period <= end:
        count = min(per_chunk, (end - position) // period)
        yield from _split(one * count, chunk_size)
        position += count * period
    yield from _split(_pcm(range(position, total), period, total), chunk_size)


def _split(data: bytes, size: int) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]
