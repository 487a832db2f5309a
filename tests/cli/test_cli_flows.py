"""The command line as a newcomer meets it: help, --out, fetch, logs, early errors, --fake runs."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from venice_audio_async import QueueRequest
from venice_audio_async._cli import main
from venice_audio_async._cli.exits import ExitCode
from venice_audio_async._cli.folder import FAKE_STATE_NAME, JOURNAL_NAME
from venice_audio_async._cli.parser import build_parser
from venice_audio_async.journal import Journal
from venice_audio_async.testing import FakeServer, JobScript
from venice_audio_async.testing._tones import iter_tone
from venice_audio_async.types import FileSink

from ..conftest import API_KEY, make_client, make_session

FAKE = "using the built-in fake server"
CLI_SCALE = 0.02


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["VENICE_API_KEY"] = API_KEY
    env.pop("VENICE_AUDIO_LOG", None)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "venice_audio_async", *args, "--plain"]


def _against(server: FakeServer, *args: str) -> list[str]:
    return _cli(*args, "--base-url", server.url, "--time-scale", str(CLI_SCALE))


async def _run(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(command, env=_env(), check=False)


def _seconds(path: Path) -> float:
    with wave.open(str(path)) as reader:
        assert (reader.getsampwidth(), reader.getnchannels()) == (2, 1)
        frames: int = reader.getnframes()
        rate: int = reader.getframerate()
    return frames / rate


def _tracks(path: Path, count: int) -> Path:
    rows = [
        {"model": "stable-audio-25", "prompt": f"soft rain number {i:02d}", "duration_seconds": d}
        for i, d in enumerate(range(5, 5 + count))
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _fake_queued(out: Path) -> list[str]:
    """Queue ids the built-in fake recorded in the folder's state file."""
    path = out / FAKE_STATE_NAME
    if not path.exists():
        return []
    ids = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "queued":
            ids.append(event["queue_id"])
    return ids


def _manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- help and arguments


def test_every_option_has_help() -> None:
    """Every argument of every command explains itself in --help."""
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {
        "models",
        "quote",
        "generate",
        "fetch",
        "batch",
        "resume",
        "status",
    }
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help, f"{name} {action.dest}"
            assert action.help != argparse.SUPPRESS, f"{name} {action.dest}"


@pytest.mark.parametrize(
    "argv",
    [
        ["batch", "x.jsonl", "--out", "o", "--max-spend", "-5", "--fake"],
        ["resume", "o", "--max-spend", "nan", "--fake"],
        ["generate", "stable-audio-25", "a prompt", "--duration", "-3", "--fake"],
        ["quote", "elevenlabs-music", "--duration", "0", "--fake"],
        ["models", "--time-scale", "0", "--fake"],
        ["models", "--log-level", "loud", "--fake"],
    ],
)
def test_bad_arguments_exit_2_before_any_server(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative --max-spend, a zero duration, a bad level: exit 2, no server started."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert FAKE not in err
    assert "error: argument" in err


def test_unreadable_batch_file_is_invalid_input_before_any_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing batch file and a folder given as one are refused before any server."""
    for source in (tmp_path / "missing.jsonl", tmp_path):
        assert (
            main(["batch", str(source), "--out", str(tmp_path / "o"), "--fake"])
            == ExitCode.INVALID_INPUT
        )
        err = capsys.readouterr().err
        assert f"cannot read {source}" in err
        assert FAKE not in err
    assert not (tmp_path / "o").exists()


def test_batch_out_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """batch --out naming a file exits 4 (invalid input) and says so, before any server."""
    batch = _tracks(tmp_path / "b.jsonl", 1)
    (tmp_path / "taken").write_text("")
    assert (
        main(["batch", str(batch), "--out", str(tmp_path / "taken"), "--fake"])
        == ExitCode.INVALID_INPUT
    )
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err
    assert FAKE not in err


def test_generate_into_a_missing_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """generate --out missing/x.wav exits 4 (invalid input) before anything is queued."""
    target = tmp_path / "missing" / "x.wav"
    argv = ["generate", "stable-audio-25", "rain on a tin roof", "--out", str(target), "--fake"]
    assert main(argv) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert FAKE not in err


# --------------------------------------------------------------------------- generate --out


def test_generate_into_an_existing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing folder is a folder: the file is named by prompt and container inside it."""
    prompt = "rain on a tin roof"
    argv = ["generate", "stable-audio-25", prompt, "--duration", "6", "--out", str(tmp_path)]
    code = main([*argv, "--fake"])
    assert code == 0
    written = Path(capsys.readouterr().out.strip())
    assert written.parent == tmp_path
    assert written.name.startswith("rain-on-a-tin-roof")
    assert written.suffix == ".wav"
    assert _seconds(written) == 6.0


@pytest.mark.parametrize(("asked", "kept"), [("gen1", "gen1.wav"), ("rain.mp3", "rain.wav")])
def test_generate_names_the_file_by_its_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], asked: str, kept: str
) -> None:
    """A file path whose extension is wrong (or missing) gets the container's, with a notice."""
    target = tmp_path / asked
    code = main(
        ["generate", "stable-audio-25", "rain on a tin roof", "--out", str(target), "--fake"]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert Path(captured.out.strip()) == tmp_path / kept
    assert f"saved as {kept}, not {asked}" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept]
    assert _seconds(tmp_path / kept) == 30.0  # the model's default duration


def test_log_level_debug_shows_each_request(capsys: pytest.CaptureFixture[str]) -> None:
    """--log-level debug prints a record per request to stderr, never the key."""
    assert main(["models", "--fake", "--log-level", "debug"]) == 0
    err = capsys.readouterr().err
    assert "DEBUG venice_audio_async: models 200" in err
    assert "fake-key" not in err


# --------------------------------------------------------------------------- fetch and Ctrl-C


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    """A fake on the CLI's time scale whose jobs run 100 virtual seconds."""
    async with FakeServer(
        time_scale=CLI_SCALE, api_keys=[API_KEY], job_script=JobScript(duration=100.0)
    ) as fake:
        yield fake


@pytest.mark.anyio
async def test_ctrl_c_on_generate_names_the_job_and_fetch_gets_it(
    server: FakeServer, tmp_path: Path
) -> None:
    """Ctrl-C on generate promises no journal: it names the job, and fetch downloads it."""
    process = await anyio.open_process(
        _against(server, "generate", "stable-audio-25", "a slow piece", "--out", str(tmp_path)),
        env=_env(),
    )
    try:
        with anyio.fail_after(30):
            while not server.queue_ids():
                await anyio.sleep(0.01)
            await anyio.sleep(0.1)
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            code = await process.wait()
        assert process.stderr is not None
        err = b"".join([chunk async for chunk in process.stderr]).decode()
    finally:
        await process.aclose()
    (queue_id,) = server.queue_ids()
    assert code == 130
    assert "journal" not in err
    assert f"venice-audio fetch {queue_id} --model stable-audio-25" in err

    target = tmp_path / "fetched.mp3"
    result = await _run(
        _against(server, "fetch", queue_id, "--model", "stable-audio-25", "--out", str(target))
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == str(tmp_path / "fetched.wav")
    assert (tmp_path / "fetched.wav").read_bytes() == server.audio_for(queue_id)
    assert "saved as fetched.wav" in result.stderr.decode()


@pytest.mark.anyio
async def test_fetch_into_a_folder(server: FakeServer, tmp_path: Path) -> None:
    """fetch into an existing folder names the file by its queue id and container."""
    server.plan(JobScript(duration=1.0))
    async with make_client(server) as client:
        job = await client.queue(QueueRequest("stable-audio-25", "fetched by queue id"))
    result = await _run(
        _against(server, "fetch", job.queue_id, "--model", job.model, "--out", str(tmp_path))
    )
    assert result.returncode == 0, result.stderr.decode()
    written = Path(result.stdout.decode().strip())
    assert written == tmp_path / f"attached-{job.queue_id}.wav"
    assert written.read_bytes() == server.audio_for(job.queue_id)


# --------------------------------------------------------------------------- resume


def test_resume_of_an_empty_or_missing_folder_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """resume of a folder without a batch, or of no folder, says there is nothing to resume."""
    assert main(["resume", str(tmp_path), "--fake"]) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert "nothing to resume" in err
    assert f"venice-audio batch FILE --out {tmp_path}" in err
    assert main(["resume", str(tmp_path / "nope"), "--fake"]) == ExitCode.INVALID_INPUT
    assert "is not a folder: nothing to resume" in capsys.readouterr().err


def test_resume_of_a_finished_batch_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """resume of a finished batch says every line is done, without starting any server."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 2)
    assert main(["batch", str(batch), "--out", str(out), "--fake", "--plain"]) == 0
    capsys.readouterr()
    assert main(["resume", str(out), "--fake", "--plain"]) == 0
    err = capsys.readouterr().err
    assert "nothing to resume: every line of the batch" in err
    assert "(2 succeeded)" in err
    assert FAKE not in err


def test_resume_fetches_lines_whose_audio_could_not_be_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines that failed only because the disk was full are fetched again by resume once
    space is freed (the library's resume would: the CLI asks the same rule)."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 3)

    async def disk_full(self: FileSink, size: int) -> tuple[bytes | None, Path | None]:
        await self.abort()
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(FileSink, "finish", disk_full)
        assert main(["batch", str(batch), "--out", str(out), "--fake", "--plain"]) == 1
    assert [row["state"] for row in _manifest(out)] == ["failed"] * 3
    capsys.readouterr()
    assert main(["resume", str(out), "--fake", "--plain"]) == 0
    err = capsys.readouterr().err
    assert "nothing to resume" not in err
    rows = _manifest(out)
    assert [row["state"] for row in rows] == ["succeeded"] * 3
    assert all((out / row["file"]).stat().st_size > 0 for row in rows)
    assert len(_fake_queued(out)) == 3  # fetched, not queued again


def test_fake_and_real_batches_are_not_mixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder made with --fake is not resumed against the real API, nor the reverse."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 1)
    assert main(["batch", str(batch), "--out", str(out), "--fake", "--plain"]) == 0
    capsys.readouterr()
    for command in (["resume", str(out)], ["batch", str(batch), "--out", str(out)]):
        assert main(command) == ExitCode.INVALID_INPUT
        assert "add --fake to go on with it" in capsys.readouterr().err
    (out / FAKE_STATE_NAME).unlink()  # now it looks like a real batch: --fake is refused
    for command in (["resume", str(out)], ["batch", str(batch), "--out", str(out)]):
        assert main([*command, "--fake"]) == ExitCode.INVALID_INPUT
        assert "the built-in fake server does not know its jobs" in capsys.readouterr().err
    assert not (out / FAKE_STATE_NAME).exists()  # the refused fake left nothing behind


# --------------------------------------------------------------------------- unwritable folders


@contextlib.contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """Files cannot be created in ``folder`` (as in a read-only folder; chmod does not stop
    root, so the refusal is made where files are opened). SQLite is not affected."""
    real_open = Path.open

    def refusing(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self.parent == folder and any(flag in mode for flag in "wax+"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "open", refusing)
        yield


def _journal_lines(out: Path, count: int) -> None:
    """A batch folder whose journal holds ``count`` lines recorded but never sent."""

    async def record() -> None:
        async with (
            FakeServer() as server,
            make_session(server, journal=out / JOURNAL_NAME, output_dir=out) as session,
        ):
            requests = [
                QueueRequest("stable-audio-25", f"soft rain number {i:02d}", duration_seconds=5)
                for i in range(count)
            ]
            await session.journal_requests(
                requests, keys=[f"line-{i + 1}" for i in range(count)], destination=out
            )

    out.mkdir()
    anyio.run(record)


def _states(out: Path) -> list[str]:
    async def read() -> list[str]:
        async with await Journal.open(out / JOURNAL_NAME, create=False) as journal:
            return [entry.state.value for entry in await journal.entries()]

    return anyio.run(read)


def test_resume_into_an_unwritable_folder_pays_for_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """resume of a folder the manifest cannot be written to is refused (exit 4) before any
    line is queued: found out after, the lines would be paid for and the run would crash."""
    out = tmp_path / "out"
    _journal_lines(out, 2)
    capsys.readouterr()
    with _unwritable(out):
        assert main(["resume", str(out), "--fake", "--plain"]) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert f"cannot write into {out} (Permission denied)" in err
    assert "Nothing was sent" in err
    assert "Traceback" not in err
    assert _states(out) == ["intent", "intent"]
    assert _fake_queued(out) == []
    assert main(["resume", str(out), "--fake", "--plain"]) == 0  # writable again: it runs
    assert [row["state"] for row in _manifest(out)] == ["succeeded", "succeeded"]


def test_batch_into_an_unwritable_folder_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """batch into a folder it cannot write to is refused before any server starts."""
    out = tmp_path / "out"
    out.mkdir()
    batch = _tracks(tmp_path / "b.jsonl", 2)
    with _unwritable(out):
        assert (
            main(["batch", str(batch), "--out", str(out), "--fake", "--plain"])
            == ExitCode.INVALID_INPUT
        )
    err = capsys.readouterr().err
    assert f"cannot write into {out}" in err
    assert FAKE not in err
    assert not (out / JOURNAL_NAME).exists()


def test_a_file_error_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file the command needs and cannot write, wherever it is met, ends the command with
    a message and exit 4, never a raw OSError traceback (here: resume of a finished batch,
    which only rewrites the manifest)."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 1)
    assert main(["batch", str(batch), "--out", str(out), "--fake", "--plain"]) == 0
    capsys.readouterr()
    with _unwritable(out):
        assert main(["resume", str(out), "--fake", "--plain"]) == ExitCode.INVALID_INPUT
    err = capsys.readouterr().err
    assert "error: Permission denied: " in err
    assert f"venice-audio resume {out} --fake finishes it" in err


# --------------------------------------------------------------------------- --fake end to end


async def _start_then_stop(out: Path, batch: Path, stop: signal.Signals, after: int) -> int:
    """Run batch --fake, send ``stop`` once the fake recorded ``after`` jobs; the exit code."""
    process = await anyio.open_process(
        _cli("batch", str(batch), "--out", str(out), "--fake", "--time-scale", "0.05"),
        env=_env(),
    )
    try:
        with anyio.fail_after(30):
            while len(_fake_queued(out)) < after:
                await anyio.sleep(0.005)
        process.send_signal(stop)
        with anyio.fail_after(30):
            return await process.wait()
    finally:
        await process.aclose()


def _assert_finished(out: Path, count: int) -> None:
    rows = _manifest(out)
    assert [r["state"] for r in rows] == ["succeeded"] * count
    for i, row in enumerate(rows):
        assert row["content_type"] == "audio/wav"
        assert _seconds(out / row["file"]) == 5 + i  # the requested duration_seconds
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


@pytest.mark.anyio
async def test_ctrl_c_then_resume_fake_finishes_every_line(tmp_path: Path) -> None:
    """batch --fake, Ctrl-C mid-run, resume --fake: every line done, none queued twice."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 12)
    assert await _start_then_stop(out, batch, signal.SIGINT, after=6) == 130
    queued = _fake_queued(out)
    assert 6 <= len(queued) < 12

    result = await _run(_cli("resume", str(out), "--fake", "--time-scale", "0.05"))
    assert result.returncode == 0, result.stderr.decode()
    _assert_finished(out, 12)
    assert sorted(_fake_queued(out)) == sorted({r["queue_id"] for r in _manifest(out)})
    assert set(queued) <= set(_fake_queued(out))  # the first run's jobs were fetched


@pytest.mark.anyio
async def test_kill_9_then_resume_fake_finishes_every_line(tmp_path: Path) -> None:
    """batch --fake, kill -9 mid-run, resume --fake: the new fake knows the old one's jobs."""
    out = tmp_path / "out"
    batch = _tracks(tmp_path / "b.jsonl", 12)
    assert await _start_then_stop(out, batch, signal.SIGKILL, after=6) == -signal.SIGKILL
    queued = _fake_queued(out)
    # A queue call cut by the kill leaves its line "unknown": sending it again is asked for.
    result = await _run(
        _cli("resume", str(out), "--fake", "--time-scale", "0.05", "--requeue-unknown")
    )
    assert result.returncode == 0, result.stderr.decode()
    _assert_finished(out, 12)
    kept = {r["queue_id"] for r in _manifest(out)}
    assert len(kept & set(queued)) >= len(queued) - 1  # at most the one cut mid-call is redone


def test_fake_wav_parses_with_wave() -> None:
    """A fake WAV read back with the stdlib has the requested length (no file needed)."""
    with wave.open(io.BytesIO(b"".join(iter_tone(3.25, seed="x")))) as reader:
        assert reader.getnframes() == 3.25 * reader.getframerate()
