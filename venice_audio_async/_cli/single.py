"""``generate`` (queue one job, wait, save its audio) and ``fetch`` (a job queued earlier).

``--out`` is checked before anything is sent, and the saved file is named by the
container actually received.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._core.models import AudioResult, Job
from .connect import endpoint, need_key, open_session
from .console import on_interrupt, say
from .exits import ExitCode
from .folder import FAKE_STATE_NAME
from .output import emit, json_mode

__all__ = ["cmd_fetch", "cmd_generate"]

_AUDIO_SUFFIXES = (".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a", ".aac")


def _request_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "lyrics_prompt": args.lyrics,
        "duration_seconds": args.duration,
        "force_instrumental": args.instrumental,
        "loop": args.loop,
        "voice": args.voice,
        "speed": args.speed,
    }
    return {k: v for k, v in options.items() if v is not None}


def _audio_target(out: str) -> Path:
    """Check ``--out`` of one audio file before anything is sent: a folder, or a file path.

    Raises:
        ValueError: the file's folder does not exist.
    """
    target = Path(out)
    if target.is_dir():
        return target
    if not target.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {target.parent} does not exist")
    return target


def _named_by_container(audio: AudioResult, target: Path) -> Path:
    """The file, renamed if ``--out`` named a file whose extension is not the container's.

    Files are always named by the container actually received: ``--out rain.mp3`` that
    receives WAV becomes ``rain.wav`` (and ``--out take1`` becomes ``take1.wav``), with a
    notice. A folder ``--out`` is named right by the library already.
    """
    path = audio.path
    assert path is not None
    wanted = f".{audio.format}"
    if target.is_dir() or path.suffix.lower() == wanted:
        return path
    if path.suffix.lower() in (*_AUDIO_SUFFIXES, ""):
        fixed = path.with_suffix(wanted)
    else:
        fixed = path.with_name(path.name + wanted)  # "take.v2" is a name, not a container
    path.replace(fixed)
    say(f"the audio is {audio.format.upper()}, so it was saved as {fixed.name}, not {path.name}")
    return fixed


def _tell_audio(args: argparse.Namespace, audio: AudioResult, path: Path) -> int:
    """Print where the audio was saved (``--json``: an ``audio`` object); exit code 0."""
    if json_mode(args):
        emit(
            "audio",
            model=audio.model,
            queue_id=audio.queue_id,
            path=str(path),
            bytes=audio.size,
            content_type=audio.content_type,
            format=audio.format,
        )
    else:
        print(path)
    return ExitCode.OK


def _fetch_hint(args: argparse.Namespace, jobs: Sequence[Job]) -> str:
    if not jobs:
        return "interrupted before anything was queued; nothing was spent"
    if args.fake:
        return "interrupted; the built-in fake server stopped with its job"
    commands = "\n".join(
        f"    venice-audio fetch {job.queue_id} --model {job.model} --out {args.out}"
        for job in jobs
    )
    return (
        "interrupted; the job was queued (and is paid for) and keeps running at Venice. "
        f"Fetch its audio later with:\n{commands}"
    )


async def cmd_generate(args: argparse.Namespace) -> int:
    """``generate``: queue one job, wait for it and print the path of its audio."""
    target = _audio_target(args.out)
    on_interrupt(_fetch_hint(args, []))
    async with endpoint(args) as (url, key, clock):
        if not need_key(key):
            return ExitCode.AUTHENTICATION
        async with open_session(args, url, key, clock) as session:
            try:
                job = await session.submit(
                    args.model, args.prompt, destination=target, **_request_options(args)
                )
                on_interrupt(_fetch_hint(args, [job]))
                say(f"queued {job.queue_id} ({job.model}); waiting...")
                audio = await session.wait_for(job)
            finally:
                # generate keeps no journal: a job queued as Ctrl-C came is named here.
                if session.unfinished():
                    on_interrupt(_fetch_hint(args, session.unfinished()))
    return _tell_audio(args, audio, _named_by_container(audio, target))


def _fake_folder_state(args: argparse.Namespace, target: Path) -> Path | None:
    """The job file of the ``--fake`` batch folder that knows the job, if any.

    ``--folder DIR`` names it; without it, ``--out`` is used when it is such a folder.

    Raises:
        ValueError: ``--folder`` without ``--fake``, or a folder that holds no fake batch.
    """
    if args.folder is None:
        state = target / FAKE_STATE_NAME
        return state if args.fake and target.is_dir() and state.exists() else None
    if not args.fake:
        raise ValueError(
            "--folder is for --fake: it names the --fake batch folder whose built-in fake "
            "server queued the job (the real API knows its jobs without it)"
        )
    state = Path(args.folder) / FAKE_STATE_NAME
    if not state.exists():
        raise ValueError(
            f"--folder {args.folder}: no --fake batch was run there (it has no {FAKE_STATE_NAME})"
        )
    return state


async def cmd_fetch(args: argparse.Namespace) -> int:
    """``fetch``: wait for a job queued earlier and print the path of its audio.

    With ``--fake``, the built-in fake server knows the jobs of a ``--fake`` batch folder
    (``--folder``, or ``--out`` when it is one): they are kept in its job file.
    """
    target = _audio_target(args.out)
    fake_state = _fake_folder_state(args, target)
    on_interrupt("interrupted; the job is still at Venice: run the same fetch again")
    async with endpoint(args, fake_state=fake_state) as (url, key, clock):
        if not need_key(key):
            return ExitCode.AUTHENTICATION
        async with open_session(args, url, key, clock) as session:
            job = session.attach(args.model, args.queue_id, destination=target)
            say(f"fetching {job.queue_id} ({job.model}); waiting until it is done...")
            audio = await session.wait_for(job)
    return _tell_audio(args, audio, _named_by_container(audio, target))
