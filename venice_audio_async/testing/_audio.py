"""Tiny but structurally valid audio files for the fake server.

The fake server answers a finished ``retrieve`` with real-looking audio so that clients can
sniff the container from its first bytes, exactly as they would with Venice's output:

* **WAV**: a canonical 44-byte ``RIFF``/``WAVE`` header (PCM, mono, 8 kHz, 8-bit) and a ``data``
  chunk;
* **MP3**: an ID3v2.4 tag (only padding) followed by MPEG-1 Layer III frames (128 kbit/s,
  48 kHz, mono: every frame is exactly 384 bytes and starts with the sync word ``FF FB``);
* **FLAC**: the ``fLaC`` marker, a ``STREAMINFO`` block and ``APPLICATION`` metadata blocks that
  carry the filler bytes (a valid stream with no audio frames), optionally preceded by an ID3v2
  tag, as some Venice FLAC output is.

Every builder produces *exactly* the requested number of bytes, and the filler is a
deterministic pseudo-random function of ``seed``: the same ``(format, size, seed)`` always
gives the same bytes, so a test can compare a downloaded file with :func:`audio_bytes`.
:func:`iter_audio` yields the same bytes in chunks, so a 20 MB body is never held twice.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator

__all__ = [
    "AUDIO_FORMATS",
    "CONTENT_TYPES",
    "DEFAULT_AUDIO_SIZE",
    "audio_bytes",
    "iter_audio",
    "min_audio_size",
    "sniff_audio_format",
]

#: Container names used by the catalogue's ``default_format``.
AUDIO_FORMATS = ("flac", "mp3", "wav")

#: ``Content-Type`` Venice sends for each container.
CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}

#: Body size used when a job script does not ask for one (a few frames of each format).
DEFAULT_AUDIO_SIZE = 1024

# The filler is generated in blocks of this size whatever chunk size the caller asks for,
# because ``Random.randbytes(a) + randbytes(b)`` need not equal ``randbytes(a + b)``.
_BLOCK = 64 * 1024

_WAV_HEADER = 44
_ID3_HEADER = 10
_MP3_FRAME = 384  # MPEG-1 Layer III, 128 kbit/s, 48 kHz, no padding: 144 * 128000 / 48000
_MP3_FRAME_HEADER = b"\xff\xfb\x94\xc4"  # sync, MPEG-1 L3 no CRC; 128k/48k; mono, original
_FLAC_HEAD = 4 + 4 + 34  # "fLaC" + block header + STREAMINFO
_FLAC_APP_MIN = 4 + 4  # block header + application id
_FLAC_APP_MAX = 4 + 0xFFFFFF  # block length is a 24-bit field
_FLAC_APP_ID = b"vfak"


def min_audio_size(fmt: str, *, id3: bool = False) -> int:
    """The smallest body :func:`audio_bytes` can build for ``fmt``.

    Raises:
        ValueError: ``fmt`` is not one of :data:`AUDIO_FORMATS`.
    """
    if fmt == "wav":
        return _WAV_HEADER
    if fmt == "mp3":
        return _ID3_HEADER + _MP3_FRAME
    if fmt == "flac":
        return (_ID3_HEADER if id3 else 0) + _FLAC_HEAD + _FLAC_APP_MIN
    raise ValueError(f"unknown audio format {fmt!r}; expected one of {AUDIO_FORMATS}")


def audio_bytes(
    fmt: str, size: int = DEFAULT_AUDIO_SIZE, *, seed: str | bytes = b"", id3: bool = False
) -> bytes:
    """Build a whole audio file of exactly ``size`` bytes.

    Args:
        fmt: ``"mp3"``, ``"wav"`` or ``"flac"``.
        size: total length in bytes (at least :func:`min_audio_size`).
        seed: makes the filler bytes unique to, e.g., a queue id.
        id3: FLAC only: start with an ID3v2 tag before ``fLaC``.

    Raises:
        ValueError: unknown format, or ``size`` too small for the format.
    """
    return b"".join(iter_audio(fmt, size, seed=seed, id3=id3))


def iter_audio(
    fmt: str,
    size: int = DEFAULT_AUDIO_SIZE,
    *,
    seed: str | bytes = b"",
    id3: bool = False,
    chunk_size: int = _BLOCK,
) -> Iterator[bytes]:
    """Yield the bytes of :func:`audio_bytes` in chunks of at most ``chunk_size`` bytes.

    Raises:
        ValueError: unknown format, ``size`` too small, or ``chunk_size < 1``.
    """
    minimum = min_audio_size(fmt, id3=id3)
    if size < minimum:
        raise ValueError(f"a {fmt} body needs at least {minimum} bytes, got {size}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    rng = random.Random(hashlib.sha256(seed.encode() if isinstance(seed, str) else seed).digest())
    if fmt == "wav":
        pieces = _wav_pieces(size, rng)
    elif fmt == "mp3":
        pieces = _mp3_pieces(size, rng)
    else:
        pieces = _flac_pieces(size, rng, id3=id3)
    return _rechunk(pieces, chunk_size)


def sniff_audio_format(data: bytes) -> str | None:
    """Guess the container from the first bytes (``"mp3"``, ``"wav"``, ``"flac"`` or ``None``).

    An ID3v2 tag is skipped first, so FLAC with a leading ID3 tag is recognised as FLAC.
    """
    head = data
    if head[:3] == b"ID3" and len(head) >= _ID3_HEADER:
        tag_size = _syncsafe_decode(head[6:10])
        after = head[_ID3_HEADER + tag_size :]
        if after[:4] == b"fLaC":
            return "flac"
        return "mp3"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3"
    return None


# --- builders -------------------------------------------------------------------------------


def _filler(rng: random.Random, count: int) -> Iterator[bytes]:
    while count > 0:
        block = rng.randbytes(_BLOCK)
        if count < _BLOCK:
            block = block[:count]
        count -= len(block)
        yield block


def _wav_pieces(size: int, rng: random.Random) -> Iterator[bytes]:
    data_size = size - _WAV_HEADER
    # RIFF chunks are word aligned: an odd-sized data chunk is followed by one pad byte.
    pad = data_size % 2
    data_size -= pad
    yield struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        size - 8,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        1,  # mono
        8000,  # sample rate
        8000,  # byte rate
        1,  # block align
        8,  # bits per sample
        b"data",
        data_size,
    )
    yield from _filler(rng, data_size)
    if pad:
        yield b"\x00"


def _syncsafe(value: int) -> bytes:
    return bytes(((value >> shift) & 0x7F) for shift in (21, 14, 7, 0))


def _syncsafe_decode(raw: bytes) -> int:
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
    return value


def _id3_tag(total: int) -> bytes:
    """An ID3v2.4 tag of ``total`` bytes holding only padding (valid per the spec)."""
    body = total - _ID3_HEADER
    return b"ID3\x04\x00\x00" + _syncsafe(body) + bytes(body)


def _mp3_pieces(size: int, rng: random.Random) -> Iterator[bytes]:
    frames = (size - _ID3_HEADER) // _MP3_FRAME
    # The ID3 padding absorbs whatever does not fill a whole frame, so the size is exact.
    yield _id3_tag(size - frames * _MP3_FRAME)
    payload = _MP3_FRAME - len(_MP3_FRAME_HEADER)
    # Draw frame payloads from 64 KiB blocks so the cost stays one randbytes call per block.
    per_block = _BLOCK // payload
    done = 0
    while done < frames:
        batch = min(per_block, frames - done)
        block = rng.randbytes(batch * payload)
        yield b"".join(
            _MP3_FRAME_HEADER + block[i * payload : (i + 1) * payload] for i in range(batch)
        )
        done += batch


def _flac_pieces(size: int, rng: random.Random, *, id3: bool) -> Iterator[bytes]:
    remaining = size
    if id3:
        yield _id3_tag(_ID3_HEADER)
        remaining -= _ID3_HEADER
    remaining -= _FLAC_HEAD
    # Split the rest into APPLICATION blocks (each 8 bytes .. 16 MiB + 4 bytes).
    blocks: list[int] = []
    while remaining > 0:
        take = min(remaining, _FLAC_APP_MAX)
        if 0 < remaining - take < _FLAC_APP_MIN:
            take -= _FLAC_APP_MIN
        blocks.append(take)
        remaining -= take
    streaminfo = (
        struct.pack(">HH", 4096, 4096)  # min / max block size (samples)
        + bytes(6)  # min / max frame size: unknown
        # 20 bits sample rate (44100), 3 bits channels-1 (1 channel), 5 bits bps-1 (16 bit),
        # 36 bits total samples (0 = unknown)
        + ((44100 << 44) | (0 << 41) | (15 << 36)).to_bytes(8, "big")
        + bytes(16)  # MD5 of the (absent) audio: unset
    )
    yield b"fLaC" + _flac_block_header(last=False, kind=0, length=34) + streaminfo
    for index, total in enumerate(blocks):
        last = index == len(blocks) - 1
        yield _flac_block_header(last=last, kind=2, length=total - 4) + _FLAC_APP_ID
        yield from _filler(rng, total - _FLAC_APP_MIN)


def _flac_block_header(*, last: bool, kind: int, length: int) -> bytes:
    return bytes([(0x80 if last else 0) | kind]) + length.to_bytes(3, "big")


def _rechunk(pieces: Iterator[bytes], chunk_size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for piece in pieces:
        if not buffer and len(piece) == chunk_size:
            yield piece
            continue
        buffer += piece
        while len(buffer) >= chunk_size:
            yield bytes(buffer[:chunk_size])
            del buffer[:chunk_size]
    if buffer:
        yield bytes(buffer)
