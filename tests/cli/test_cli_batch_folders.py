"""``batch`` into a folder that holds a batch already, and ``fetch --fake`` of a batch's job."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from venice_audio_async import QueueRequest, VeniceClient
from venice_audio_async._cli import main
from venice_audio_async._cli.exits import ExitCode
from venice_audio_async._cli.folder import FAKE_STATE_NAME, JOURNAL_NAME
from venice_audio_async.testing import FakeServer, JobScript

MODEL = "stable-audio-25"


def _rows(*indices: int) -> list[dict[str, Any]]:
    return [
        {"model": MODEL, "prompt": f"soft rain number {i:02d}", "duration_seconds": 5 + i}
        for i in indices
    ]


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _fake_queued(out: Path) -> list[str]:
    lines = (out / FAKE_STATE_NAME).read_text().splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [e["queue_id"] for e in events if e.get("event") == "queued"]


def _manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _batch(file: str, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["batch", file, "--out", str(out), "--fake", "--plain"])
    return code, capsys.readouterr().err


def _progress_is_sane(err: str, total: int) -> None:
    counts = [(int(a), int(b)) for a, b in re.findall(r"\] (\d+)/(\d+) ", err)]
    assert counts, err
    assert all(done <= of == total for done, of in counts), counts
    assert counts[-1] == (total, total)


def test_batch_of_another_file_adds_its_new_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder made from one file, then a batch of another file into it: its new lines are
    queued (and said so), its lines the folder holds are not, identical lines are two jobs."""
    out = tmp_path / "out"
    code, _ = _batch(_write(tmp_path / "a.jsonl", _rows(0, 1, 2, 3, 4, 5, 6, 7)), out, capsys)
    assert code == 0
    assert len(_fake_queued(out)) == 8
    other = [*_rows(2, 0), {"model": MODEL, "prompt": "a brand new line", "duration_seconds": 5}]
    other += _rows(0)  # a second, identical copy of line 0: a job of its own
    code, err = _batch(_write(tmp_path / "b.jsonl", other), out, capsys)
    assert code == 0, err
    assert "2 of 4 line(s) already in this folder's journal; 2 new line(s) to queue" in err
    assert "also holds 6 line(s) of an earlier batch file" in err
    assert "0 to queue" not in err
    _progress_is_sane(err, 10)
    assert len(_fake_queued(out)) == 10
    rows = _manifest(out)
    assert [r["state"] for r in rows] == ["succeeded"] * 10
    assert sorted(r["prompt"] for r in rows).count("soft rain number 00") == 2
    assert len({r["file"] for r in rows}) == 10
    assert all((out / r["file"]).exists() for r in rows)

    code, err = _batch(str(tmp_path / "b.jsonl"), out, capsys)  # again: nothing new
    assert code == 0, err
    assert "4 of 4 line(s) already in this folder's journal; no new line to queue" in err
    assert len(_fake_queued(out)) == 10


def test_batch_with_lines_moved_and_inserted_pays_only_the_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same file, its lines reordered and one inserted: only the inserted line is queued."""
    out = tmp_path / "out"
    assert _batch(_write(tmp_path / "a.jsonl", _rows(0, 1, 2)), out, capsys)[0] == 0
    code, err = _batch(_write(tmp_path / "a.jsonl", _rows(2, 9, 1, 0)), out, capsys)
    assert code == 0, err
    assert "3 of 4 line(s) already in this folder's journal; 1 new line(s) to queue" in err
    assert len(_fake_queued(out)) == 4
    _progress_is_sane(err, 4)


def test_a_folder_keyed_by_line_numbers_is_recognised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder whose journal keys lines by number only (earlier versions) is run again
    without paying twice, and its manifest keeps its line numbers."""
    out = tmp_path / "out"
    file = _write(tmp_path / "a.jsonl", _rows(0, 1, 2))
    assert _batch(file, out, capsys)[0] == 0
    with sqlite3.connect(out / JOURNAL_NAME) as db:  # as an earlier version wrote them
        db.execute("UPDATE jobs SET key = 'line-' || id")
    db.close()
    code, err = _batch(file, out, capsys)
    assert code == 0, err
    assert "3 of 3 line(s) already in this folder's journal" in err
    assert len(_fake_queued(out)) == 3
    assert [r["line"] for r in _manifest(out)] == [1, 2, 3]


async def _queue_on_folder_fake(out: Path) -> str:
    """Queue one job on a fake that keeps its jobs in ``out``, as ``batch --fake`` does."""
    scale = 0.01  # the CLI's --fake time scale
    async with FakeServer(
        time_scale=scale,
        job_script=JobScript(duration=2.0),
        audio="tones",
        state_path=out / FAKE_STATE_NAME,
    ) as server:
        client = VeniceClient(api_key="fake-key", base_url=server.url)
        async with client:
            job = await client.queue(QueueRequest(MODEL, "a job left running", duration_seconds=5))
    return job.queue_id


def test_fetch_fake_gets_a_job_of_a_fake_batch_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fetch --fake knows the jobs of a --fake batch folder: --out it, or name it --folder."""
    out = tmp_path / "out"
    out.mkdir()
    first, second = (anyio.run(_queue_on_folder_fake, out) for _ in range(2))
    fetch = ["fetch", first, "--model", MODEL, "--fake", "--plain"]
    assert main([*fetch, "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / f"attached-{first}.wav").stat().st_size > 0
    target = tmp_path / "elsewhere.wav"
    fetch[1] = second
    assert main([*fetch, "--out", str(target), "--folder", str(out)]) == 0
    assert target.stat().st_size > 0
    capsys.readouterr()

    assert (
        main([*fetch, "--out", str(tmp_path), "--folder", str(tmp_path)]) == ExitCode.INVALID_INPUT
    )
    assert "no --fake batch was run there" in capsys.readouterr().err
    no_fake = [a for a in fetch if a != "--fake"]
    assert main([*no_fake, "--out", str(tmp_path), "--folder", str(out)]) == ExitCode.INVALID_INPUT
    assert "--folder is for --fake" in capsys.readouterr().err
