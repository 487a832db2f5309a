"""The command line for scripts: --json, exit codes by cause, batch --dry-run, status DIR,
models --voices and the progress display's ETA, through ``main()`` on tmp folders."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from venice_audio_async import QueueRequest, VeniceClient
from venice_audio_async._cli import main
from venice_audio_async._cli.exits import ExitCode
from venice_audio_async._cli.folder import JOURNAL_NAME
from venice_audio_async._cli.parser import build_parser
from venice_audio_async._cli.progress import BatchProgress
from venice_audio_async._core.errors import ConnectionDropped
from venice_audio_async.journal import Journal
from venice_audio_async.testing import FakeServer, Fault, JobScript

from ..conftest import API_KEY

SCALE = 0.005  # the CLI's --time-scale and the fake's: a "5 s" job lasts 25 ms
MODEL = "stable-audio-25"
VOICE_MODEL = "elevenlabs-tts-multilingual-v2"

#: The keys of each --json object, as the README's "Command line" section lists them.
KEYS = {
    "model": {
        "event",
        "id",
        "name",
        "type",
        "pricing",
        "price",
        "durations",
        "min_duration",
        "max_duration",
        "default_duration",
        "voices",
    },
    "voice": {"event", "model", "voice", "default"},
    "quote": {"event", "model", "duration_seconds", "character_count", "usd"},
    "audio": {"event", "model", "queue_id", "path", "bytes", "content_type", "format"},
    "line": {
        "event",
        "line",
        "name",
        "model",
        "prompt",
        "state",
        "queue_id",
        "file",
        "bytes",
        "content_type",
        "seconds",
        "quote",
        "error",
    },
    "summary": {"event", "folder", "manifest", "lines", "states", "spent_usd", "exit_code"},
    "plan": {"event", "line", "name", "model", "usd", "new"},
    "estimate": {
        "event",
        "lines",
        "new_lines",
        "usd",
        "new_usd",
        "unpriced",
        "spent_usd",
        "max_spend_usd",
        "within_max_spend",
    },
    "status": {
        "event",
        "folder",
        "manifest",
        "lines",
        "states",
        "spent_usd",
        "resume",
        "has_work",
        "command",
    },
    "problem": {"event", "line", "message"},
    "error": {"event", "exit_code", "error", "message"},
}


@contextmanager
def _fake_in_thread(**options: Any) -> Iterator[tuple[FakeServer, BlockingPortal]]:
    """A FakeServer on the CLI's time scale, served from a thread while ``main()`` runs."""
    options.setdefault("job_script", JobScript(duration=5.0, average_execution_time=6.0))
    with start_blocking_portal() as portal:
        server = portal.call(lambda: FakeServer(time_scale=SCALE, **options))
        with portal.wrap_async_context_manager(server):
            yield server, portal


@contextmanager
def _fake(**options: Any) -> Iterator[FakeServer]:
    with _fake_in_thread(**options) as (server, _):
        yield server


async def _queue_one(server: FakeServer) -> str:
    """Queue a job the way another program would; its media waits to be fetched."""
    async with VeniceClient(api_key=API_KEY, base_url=server.url) as client:
        job = await client.queue(QueueRequest(MODEL, "a job left running", duration_seconds=5))
    return job.queue_id


def _at(url: str, *argv: str, key: str = API_KEY) -> list[str]:
    return [*argv, "--base-url", url, "--api-key", key, "--time-scale", str(SCALE), "--plain"]


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _rows(count: int, model: str = MODEL) -> list[dict[str, Any]]:
    return [
        {"model": model, "prompt": f"soft rain number {i:02d}", "duration_seconds": 5}
        for i in range(count)
    ]


def _objects(out: str) -> list[dict[str, Any]]:
    """Every line of stdout as a JSON object with its event's documented keys, exactly."""
    objects = [json.loads(line) for line in out.splitlines()]
    for obj in objects:
        assert set(obj) == KEYS[obj["event"]], obj
    return objects


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------- --json


def test_json_of_models_voices_and_quote(capsys: pytest.CaptureFixture[str]) -> None:
    """models, models --voices and quote print JSON Lines and nothing else on stdout."""
    assert main(["models", "--fake", "--json"]) == 0
    models = _objects(capsys.readouterr().out)
    assert len(models) == 10
    by_id = {m["id"]: m for m in models}
    assert by_id[VOICE_MODEL]["voices"] == 20
    assert by_id[VOICE_MODEL]["pricing"] == "per_thousand_characters"
    assert by_id[MODEL]["voices"] is None

    assert main(["models", "--voices", VOICE_MODEL, "--fake", "--json"]) == 0
    voices = _objects(capsys.readouterr().out)
    assert len(voices) == 20
    assert [v["voice"] for v in voices if v["default"]] == ["Aria"]

    assert main(["quote", "elevenlabs-music", "--duration", "60", "--fake", "--json"]) == 0
    (quote,) = _objects(capsys.readouterr().out)
    assert quote["event"] == "quote"
    assert quote["usd"] == pytest.approx(0.87)
    assert quote["duration_seconds"] == 60


def test_json_of_generate_fetch_batch_resume_and_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command's stdout is its JSON objects only; batch prints one ``line`` per line
    of the file, then a ``summary``; messages and progress go to stderr."""
    with _fake_in_thread(api_keys=[API_KEY]) as (server, portal):
        argv = _at(server.url, "generate", MODEL, "rain on a tin roof", "--duration", "5")
        assert main([*argv, "--out", str(tmp_path), "--json"]) == 0
        out, err = capsys.readouterr()
        (audio,) = _objects(out)
        assert Path(audio["path"]).stat().st_size == audio["bytes"] > 0
        assert audio["queue_id"] in server.queue_ids()
        assert "queued" in err

        queue_id = portal.call(_queue_one, server)
        argv = _at(server.url, "fetch", queue_id, "--model", MODEL)
        assert main([*argv, "--out", str(tmp_path / "fetched.wav"), "--json"]) == 0
        (fetched,) = _objects(capsys.readouterr().out)
        assert fetched["event"] == "audio"
        assert fetched["queue_id"] == queue_id
        assert Path(fetched["path"]).stat().st_size == fetched["bytes"] > 0

        folder = tmp_path / "batch"
        batch = _write(tmp_path / "b.jsonl", _rows(4))
        assert main([*_at(server.url, "batch", batch, "--out", str(folder)), "--json"]) == 0
        out, err = capsys.readouterr()
    objects = _objects(out)
    assert [o["event"] for o in objects] == ["line"] * 4 + ["summary"]
    assert sorted(o["line"] for o in objects[:4]) == [1, 2, 3, 4]
    assert all(o["state"] == "succeeded" and (folder / o["file"]).exists() for o in objects[:4])
    assert objects[-1]["states"] == {"succeeded": 4}
    assert objects[-1]["exit_code"] == 0
    assert objects[-1]["spent_usd"] == pytest.approx(4 * 0.24)
    assert "done 4" in err  # the progress display: stderr

    assert main(["resume", str(folder), "--json"]) == 0  # nothing to resume: no server
    objects = _objects(capsys.readouterr().out)
    assert [o["event"] for o in objects] == ["line"] * 4 + ["summary"]

    assert main(["status", str(folder), "--json"]) == 0
    (status,) = _objects(capsys.readouterr().out)
    assert status["states"]["stored"] == 4
    assert status["has_work"] is False


def test_json_lines_of_a_batch_come_as_lines_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line's object is printed when it finishes, not at the end: a short job's line
    comes before a long one's, whatever their order in the file."""

    def script(body: dict[str, Any]) -> JobScript:
        return JobScript(duration=60.0 if "slow" in body["prompt"] else 2.0)

    rows = [
        {"model": MODEL, "prompt": "a slow long drone", "duration_seconds": 5},
        {"model": MODEL, "prompt": "a quick short blip", "duration_seconds": 5},
    ]
    with _fake(api_keys=[API_KEY], job_script=script) as server:
        argv = _at(
            server.url, "batch", _write(tmp_path / "b.jsonl", rows), "--out", str(tmp_path / "o")
        )
        assert main([*argv, "--json"]) == 0
    lines = [o for o in _objects(capsys.readouterr().out) if o["event"] == "line"]
    assert [o["line"] for o in lines] == [2, 1]


def test_json_error_is_the_last_stdout_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A command stopped by an error prints an ``error`` object with the exit code."""
    url = f"http://127.0.0.1:{_closed_port()}/api/v1"
    assert main([*_at(url, "models"), "--json"]) == ExitCode.NETWORK
    (error,) = _objects(capsys.readouterr().out)
    assert error["exit_code"] == 7
    assert error["error"] == "ConnectError"


def test_json_batch_problems_one_object_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad lines: one ``problem`` object per problem, with its line; exit 4; nothing sent."""
    rows = [*_rows(2), {"model": MODEL, "prompt": "short"}, {"model": "no-such-model"}]
    batch = _write(tmp_path / "b.jsonl", rows)
    code = main(["batch", batch, "--out", str(tmp_path / "o"), "--fake", "--json"])
    assert code == ExitCode.INVALID_INPUT
    problems = _objects(capsys.readouterr().out)
    assert {p["event"] for p in problems} == {"problem"}
    assert sorted({p["line"] for p in problems}) == [3, 4]


# ---------------------------------------------------------------- exit codes


def test_exit_codes_are_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists every exit code with its meaning."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}\s+\w", out, re.MULTILINE), code


def test_the_exit_code_table() -> None:
    """The codes scripts rely on, as the README lists them."""
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "USAGE": 2,
        "SPEND_LIMIT": 3,
        "INVALID_INPUT": 4,
        "AUTHENTICATION": 5,
        "PAYMENT": 6,
        "NETWORK": 7,
        "INTERRUPTED": 130,
        "BROKEN_PIPE": 141,
    }


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["batch", "--dry-run"])
    assert exited.value.code == 2


def test_a_refused_key_exits_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key the API refuses (401): generate and batch exit 5 (not 1, not 2)."""
    with _fake(api_keys=[API_KEY]) as server:
        argv = _at(server.url, "generate", MODEL, "rain on a tin roof", key="wrong-key")
        assert main([*argv, "--out", str(tmp_path)]) == 5
        batch = _write(tmp_path / "b.jsonl", _rows(3))
        argv = _at(server.url, "batch", batch, "--out", str(tmp_path / "o"), key="wrong-key")
        assert main([*argv, "--json"]) == ExitCode.AUTHENTICATION
        assert server.queue_ids() == []
    summary = _objects(capsys.readouterr().out)[-1]
    assert summary["exit_code"] == 5
    assert summary["states"] == {"rejected": 3}


def test_no_key_exits_5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VENICE_API_KEY", raising=False)
    assert main(["generate", MODEL, "rain on a tin roof"]) == ExitCode.AUTHENTICATION
    assert "VENICE_API_KEY" in capsys.readouterr().err


def test_payment_required_exits_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 402 on queue: generate and batch exit 6."""
    with _fake(api_keys=[API_KEY]) as server:
        server.inject("queue", Fault.status(402, body={"error": "Insufficient balance"}), times=4)
        argv = _at(server.url, "generate", MODEL, "rain on a tin roof")
        assert main([*argv, "--out", str(tmp_path)]) == 6
        assert "402" in capsys.readouterr().err
        batch = _write(tmp_path / "b.jsonl", _rows(3))
        argv = _at(server.url, "batch", batch, "--out", str(tmp_path / "o"))
        assert main(argv) == ExitCode.PAYMENT
        # Resume reports the refused lines again (not sent again): still 6.
        assert main(_at(server.url, "resume", str(tmp_path / "o"))) == ExitCode.PAYMENT
        assert server.queue_ids() == []


def test_network_failure_exits_7(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: models, generate and batch exit 7."""
    url = f"http://127.0.0.1:{_closed_port()}/api/v1"
    assert main(_at(url, "models")) == 7
    argv = _at(url, "generate", MODEL, "rain on a tin roof", "--duration", "5")
    assert main([*argv, "--out", str(tmp_path)]) == ExitCode.NETWORK
    batch = _write(tmp_path / "b.jsonl", _rows(2))
    assert main(_at(url, "batch", batch, "--out", str(tmp_path / "o"))) == ExitCode.NETWORK
    assert "error:" in capsys.readouterr().err


def test_invalid_input_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad lines, a request breaking the model's rules, no batch in a folder: exit 4."""
    bad = _write(tmp_path / "b.jsonl", [{"model": MODEL, "prompt": "short"}])
    assert main(["batch", bad, "--out", str(tmp_path / "o"), "--fake"]) == 4
    assert main(["generate", MODEL, "short", "--fake"]) == ExitCode.INVALID_INPUT
    assert main(["status", str(tmp_path)]) == ExitCode.INVALID_INPUT


# ---------------------------------------------------------------- batch --dry-run


def test_dry_run_prices_without_sending_or_creating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run checks and prices every line from the catalogue (quote only for a model
    it cannot price), prints the total, queues nothing and creates no folder."""
    rows = [*_rows(3), {"model": "unmetered-sfx", "prompt": "a door creaking open slowly"}]
    with _fake(api_keys=[API_KEY]) as server:
        # Priced per second with no duration to price by: the catalogue cannot tell.
        row = {**server.model("elevenlabs-sound-effects-v2"), "id": "unmetered-sfx"}
        spec = row["model_spec"]
        row["model_spec"] = {k: v for k, v in spec.items() if "duration" not in k}
        server.add_model(row)
        out = tmp_path / "new"
        argv = _at(server.url, "batch", _write(tmp_path / "b.jsonl", rows), "--out", str(out))
        assert main([*argv, "--dry-run", "--json"]) == 0
        assert server.count("queue") == 0
        assert server.count("quote") == 1  # for the line the catalogue cannot price only
    assert not out.exists()
    objects = _objects(capsys.readouterr().out)
    plans, (estimate,) = objects[:-1], objects[-1:]
    assert [p["line"] for p in plans] == [1, 2, 3, 4]
    assert [p["usd"] for p in plans[:3]] == [0.24] * 3
    assert plans[3]["usd"] is not None
    assert estimate["usd"] == pytest.approx(0.72 + plans[3]["usd"])
    assert estimate["new_lines"] == 4


def _journal_rows(out: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(out / JOURNAL_NAME)) as db:
        return db.execute("SELECT * FROM jobs ORDER BY id").fetchall()


def test_dry_run_of_a_used_folder_and_the_spend_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Into a folder holding some lines: the new ones are told apart and priced, the
    journal is not changed; over --max-spend exits 3. Human output: the total on stdout."""
    out = tmp_path / "o"
    assert main(["batch", _write(tmp_path / "a.jsonl", _rows(2)), "--out", str(out), "--fake"]) == 0
    journal = _journal_rows(out)
    capsys.readouterr()
    argv = ["batch", _write(tmp_path / "b.jsonl", _rows(5)), "--out", str(out), "--fake"]
    assert main([*argv, "--dry-run"]) == 0
    stdout, err = capsys.readouterr()
    assert stdout == "dry run: 5 line(s) checked, estimated $1.20 in all\n"
    assert "a run would queue 3 new line(s), estimated $0.72 ($0.48 spent there so far)" in err
    assert main([*argv, "--dry-run", "--max-spend", "1", "--json"]) == ExitCode.SPEND_LIMIT
    estimate = _objects(capsys.readouterr().out)[-1]
    assert estimate["within_max_spend"] is False
    assert estimate["new_usd"] == pytest.approx(0.72)
    assert _journal_rows(out) == journal


def test_dry_run_without_journal_does_not_start_the_folders_fake_state(tmp_path: Path) -> None:
    """A dry run with --fake leaves no file behind, not even the fake's job file."""
    out = tmp_path / "o"
    out.mkdir()
    argv = ["batch", _write(tmp_path / "b.jsonl", _rows(2)), "--out", str(out), "--fake"]
    assert main([*argv, "--dry-run"]) == 0
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- status DIR


async def _mid_batch_folder(out: Path) -> None:
    """A folder left mid-batch: one line of each state the journal knows."""
    out.mkdir()
    async with await Journal.open(out / JOURNAL_NAME) as journal:
        ids = []
        for i in range(7):
            request = QueueRequest(model=MODEL, prompt=f"soft rain number {i:02d}")
            ids.append(await journal.add_intent(request, key=f"line-{i + 1}", estimate_usd=0.24))
        for row, queue_id in zip(ids, ("q-ok", "q-run", "q-bad", "q-net", "q-lost"), strict=False):
            await journal.mark_sending(row)
            if queue_id != "q-lost":
                await journal.mark_queued(row, queue_id)
        await journal.mark_succeeded("q-ok", path=str(out / "a.wav"), size=10, content_type="x")
        await journal.mark_failed("q-bad", ValueError("the API refused it"))
        await journal.mark_failed("q-net", ConnectionDropped("dropped"))
        await journal.mark_unknown(ids[4], ConnectionDropped("answer lost"))


def test_status_of_a_folder_mid_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status DIR counts lines by state, tells the spending and what resume would do, by
    resume's own rule; it sends nothing (there is no server) and changes nothing."""
    out = tmp_path / "o"
    anyio.run(_mid_batch_folder, out)
    assert main(["status", str(out), "--json"]) == 0
    (status,) = _objects(capsys.readouterr().out)
    assert status["lines"] == 7
    assert status["states"] == {"stored": 1, "queued": 1, "failed": 2, "unknown": 1, "not_sent": 2}
    assert status["spent_usd"] == pytest.approx(5 * 0.24)  # every job that may be billed
    assert status["resume"] == {
        "send": 2,
        "send_again": 0,
        "attach": 1,
        "fetch_again": 1,  # the dropped poll: no verdict, fetched again
        "report_lost": 1,
        "report_failed": 1,
        "skip": 1,
    }
    assert status["has_work"] is True
    assert status["command"] == f"venice-audio resume {out}"

    assert main(["status", str(out), "--requeue-unknown", "--json"]) == 0
    (again,) = _objects(capsys.readouterr().out)
    assert again["resume"]["send_again"] == 1
    assert again["command"].endswith("--requeue-unknown")

    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 line(s): 1 stored, 1 queued, 2 failed, 1 unknown, 2 not sent" in printed
    assert "2 to queue, 1 to poll, 1 to fetch again" in printed
    assert f"run: venice-audio resume {out}" in printed


# ---------------------------------------------------------------- models --voices


def test_models_voices_lists_a_models_voices(capsys: pytest.CaptureFixture[str]) -> None:
    """--voices MODEL prints one voice per line; a model without voices, or unknown, is 4."""
    assert main(["models", "--voices", VOICE_MODEL, "--fake"]) == 0
    voices = capsys.readouterr().out.splitlines()
    assert len(voices) == 20
    assert voices[0] == "Aria  (default)"
    assert "Roger" in voices
    assert main(["models", "--voices", MODEL, "--fake"]) == ExitCode.INVALID_INPUT
    assert "takes no voice" in capsys.readouterr().err
    assert main(["models", "--voices", "nope", "--fake"]) == ExitCode.INVALID_INPUT
    assert "no such audio model" in capsys.readouterr().err


# ---------------------------------------------------------------- ETA


def test_eta_from_the_pace_and_the_running_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    """The ETA is the larger of the running jobs' own estimate and the pace so far for
    lines not running yet; unknown before anything tells; 0 once all are finished."""
    now = [100.0]
    progress = BatchProgress(10, plain=True, clock=lambda: now[0])
    assert progress.eta() is None
    progress.running = 3
    progress.jobs_left = 5.0
    assert progress.eta() == 5.0  # nothing finished yet: the jobs' own estimate
    now[0] += 20.0
    progress.done, progress.failed = 1, 1
    assert progress.eta() == pytest.approx(80.0)  # 8 left at 10 s a line
    progress.refresh(force=True)
    assert "eta 1m20s" in capsys.readouterr().err
    progress.done, progress.running = 7, 2  # every line left is running: their estimate
    assert progress.eta() == 5.0
    progress.done, progress.running = 9, 0
    assert progress.eta() == 0.0


def test_a_batch_shows_its_eta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The plain progress lines of a --fake batch carry an ETA, ending at 0s."""
    out = tmp_path / "o"
    argv = ["batch", _write(tmp_path / "b.jsonl", _rows(3)), "--out", str(out), "--fake"]
    assert main([*argv, "--plain"]) == 0
    etas = re.findall(r"eta (\S+)", capsys.readouterr().err)
    assert etas, "no ETA shown"
    assert etas[-1] == "0s"
