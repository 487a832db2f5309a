"""Audio sniffing and sinks: formats recognised, files complete or absent."""

from __future__ import annotations

from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async._core.audio import safe_stem, sniff_format, sniff_needs
from venice_audio_async.types import FileSink, MemorySink

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "
FLAC = b"fLaC\x00\x00\x00\x22" + b"\x00" * 8
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 12


def _id3(body_size: int) -> bytes:
    size = bytes(
        [
            (body_size >> 21) & 0x7F,
            (body_size >> 14) & 0x7F,
            (body_size >> 7) & 0x7F,
            body_size & 0x7F,
        ]
    )
    return b"ID3\x04\x00\x00" + size + b"\x00" * body_size


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (WAV, "wav"),
        (FLAC, "flac"),
        (MP3_FRAME, "mp3"),
        (_id3(20) + MP3_FRAME, "mp3"),
        (_id3(20) + FLAC, "flac"),
        (b"<html>nope</html>", None),
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    """Magic bytes identify WAV, FLAC, MP3 and FLAC behind an ID3 tag."""
    assert sniff_format(head) == expected


def test_sniff_needs_sees_past_id3() -> None:
    """With an ID3 tag, sniffing asks for the bytes past the tag."""
    head = _id3(300)[:10]
    assert sniff_needs(head) == 10 + 300 + 4
    assert sniff_needs(b"RIFF") == 12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("../../etc/passwd", "etc-passwd"),
        ("A calm piano / rain", "A-calm-piano-rain"),
        ("...", "audio"),
        ("x" * 200, "x" * 80),
    ],
)
def test_safe_stem(text: str, expected: str) -> None:
    """Stems from prompts have no separators or leading dots."""
    assert safe_stem(text) == expected


@pytest.mark.anyio
async def test_memory_sink_cap() -> None:
    """The memory sink refuses a body over its cap, announced or not."""
    with pytest.raises(v.ResponseTooLarge):
        await MemorySink(10).begin(audio_format="mp3", content_type="audio/mpeg", content_length=11)
    sink = MemorySink(10)
    await sink.begin(audio_format="mp3", content_type="audio/mpeg", content_length=None)
    await sink.write(b"12345")
    with pytest.raises(v.ResponseTooLarge):
        await sink.write(b"678901")


@pytest.mark.anyio
async def test_file_sink_commits_atomically(tmp_path: Path) -> None:
    """A finished file appears under its final name with no temporary left."""
    sink = FileSink(tmp_path, stem="../evil name")
    await sink.begin(audio_format="wav", content_type="audio/wav", content_length=6)
    await sink.write(b"abc")
    assert next(iter(tmp_path.iterdir())).name.endswith(".part")
    await sink.write(b"def")
    data, path = await sink.finish(6)
    assert data is None
    assert path == tmp_path / "evil-name.wav"
    assert path.read_bytes() == b"abcdef"
    assert [p.name for p in tmp_path.iterdir()] == ["evil-name.wav"]


@pytest.mark.anyio
async def test_file_sink_abort_leaves_nothing(tmp_path: Path) -> None:
    """An aborted download leaves no file at all."""
    target = tmp_path / "song.mp3"
    sink = FileSink(target)
    await sink.begin(audio_format="mp3", content_type="audio/mpeg", content_length=100)
    await sink.write(b"x" * 50)
    await sink.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_file_sink_short_file_is_a_storage_error(tmp_path: Path) -> None:
    """A file holding fewer bytes than were received is a storage error, not committed."""
    sink = FileSink(tmp_path / "a.mp3")
    await sink.begin(audio_format="mp3", content_type="audio/mpeg", content_length=None)
    await sink.write(b"abc")
    with pytest.raises(v.AudioStorageError):
        await sink.finish(4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_file_sink_checks_content_length(tmp_path: Path) -> None:
    """Fewer bytes received than Content-Length announced is a truncation, not committed."""
    sink = FileSink(tmp_path / "a.mp3")
    await sink.begin(audio_format="mp3", content_type="audio/mpeg", content_length=5)
    await sink.write(b"abcd")
    with pytest.raises(v.TruncatedResponse):
        await sink.finish(4)
    assert list(tmp_path.iterdir()) == []
