"""Batch files: one generation per line, read and checked before anything is spent.

A batch is JSON Lines (one object per line) or CSV (a header row naming the fields). The
fields are those of :class:`~venice_audio_async.QueueRequest` plus an optional ``name`` for
the output file. Every problem of every line is collected, so a batch is fixed in one go:
:func:`read_batch` finds what is wrong with the file itself (bad JSON, unknown or missing
fields) and still hands over every line it could read as a request, so that
:func:`check_batch` can judge those lines by the model's rules in the same round;
:func:`sorted_problems` puts both lists in line order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._core.audio import safe_stem
from .._core.models import AudioModel, QueueRequest
from .._core.validation import queue_problems
from .._ledger.journal import JournalEntry
from .._ledger.replay import content_digest

__all__ = [
    "BatchLine",
    "check_batch",
    "manifest_rows",
    "plan_batch",
    "read_batch",
    "sorted_problems",
]

# ``key`` is not a line field: the CLI keys each job by its content (:func:`plan_batch`).
_FIELDS = {a.name: a for a in attrs.fields(QueueRequest) if a.name != "key"}
_INTS = {"duration_seconds"}
_FLOATS = {"speed"}
_BOOLS = {"force_instrumental", "lyrics_optimizer", "loop"}
_EXTRA = {"name"}
_LINE_NUMBER = re.compile(r"^line (\d+):")


@attrs.frozen
class BatchLine:
    """One request of a batch, with its line number (1-based) and output name.

    ``unchecked`` names fields the line lacks (reported already by :func:`read_batch`),
    so that :func:`check_batch` does not report them a second time. ``given_name`` is the
    ``name`` the line itself gives (``None``: ``name`` was made from its number and prompt).
    """

    number: int
    request: QueueRequest
    name: str
    unchecked: frozenset[str] = frozenset()
    given_name: str | None = None

    @property
    def digest(self) -> str:
        """What identifies the line in a folder's journal: what is sent, and the name it
        gives its file (never its number, so moved lines are recognised)."""
        return content_digest(self.request, destination=None, name=self.given_name, take=None)


@attrs.frozen
class BatchPlan:
    """A batch file against the journal of its folder (see :func:`plan_batch`)."""

    #: Lines the journal already holds (queued, finished or waiting to be sent).
    known: tuple[BatchLine, ...]
    #: New lines, each with its journal key.
    fresh: tuple[tuple[BatchLine, str], ...]
    #: Lines of the folder's journal (from other inputs) that no line of this file matches.
    others: int


def _default_name(number: int, request: QueueRequest) -> str:
    return safe_stem(f"{number:04d}-{safe_stem(str(request.prompt), max_length=40)}")


def _line_number(key: str) -> int | None:
    """The line number of a batch key (``line-7``, or ``line-7-<digest>-<n>``)."""
    if not key.startswith("line-"):
        return None
    number = key.removeprefix("line-").split("-", 1)[0]
    return int(number) if number.isdigit() else None


def _entry_digest(entry: JournalEntry, number: int) -> str:
    """The digest of a batch line the journal holds (earlier versions keyed it by number)."""
    assert entry.key is not None
    parts = entry.key.split("-")
    if len(parts) == 4:  # line-N-<digest>-<occurrence>
        return parts[2]
    given = None if entry.name == _default_name(number, entry.request) else entry.name
    return content_digest(entry.request, destination=None, name=given, take=None)


def plan_batch(lines: Sequence[BatchLine], entries: Iterable[JournalEntry]) -> BatchPlan:
    """Which lines of a batch file its folder's journal holds already, and keys for the rest.

    A line is recognised by its content and given name (:attr:`BatchLine.digest`), never by
    its number, plus its occurrence among identical lines: with two identical lines in the
    journal, a file with three of them has one new line. So lines moved, inserted or taken
    from another file are not paid again, and identical lines are separate jobs. A new
    line's key is ``line-<number>-<digest>-<occurrence>`` (the manifest reads its number).
    """
    recorded: dict[str, int] = {}
    for entry in entries:
        number = _line_number(entry.key or "")
        if number is not None:
            digest = _entry_digest(entry, number)
            recorded[digest] = recorded.get(digest, 0) + 1
    seen: dict[str, int] = {}
    known: list[BatchLine] = []
    fresh: list[tuple[BatchLine, str]] = []
    for line in lines:
        digest = line.digest
        seen[digest] = occurrence = seen.get(digest, 0) + 1
        if occurrence <= recorded.get(digest, 0):
            known.append(line)
        else:
            fresh.append((line, f"line-{line.number}-{digest}-{occurrence}"))
    matched = sum(min(n, seen.get(digest, 0)) for digest, n in recorded.items())
    return BatchPlan(
        known=tuple(known), fresh=tuple(fresh), others=sum(recorded.values()) - matched
    )


def _convert(field: str, value: Any, *, from_csv: bool) -> Any:
    if value is None or (from_csv and value == ""):
        return None
    if not from_csv:
        return value  # JSON already carries types; validation reports wrong ones
    text = str(value).strip()
    if field in _INTS:
        return int(text) if text.lstrip("-").isdigit() else text
    if field in _FLOATS:
        try:
            return float(text)
        except ValueError:
            return text
    if field in _BOOLS:
        lowered = text.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        return text
    return value


def _line_to_request(
    number: int, record: Mapping[str, Any], *, from_csv: bool
) -> tuple[BatchLine | None, list[str]]:
    """The line as a request (unless it names no model), and its problems as a file line.

    A line with problems is still returned, so that its other fields are checked against
    the model's rules in the same round; nothing is sent from a batch with any problem.
    """
    problems = []
    unknown = sorted(set(record) - set(_FIELDS) - _EXTRA)
    if unknown:
        problems.append(f"line {number}: unknown field(s) {', '.join(unknown)}")
    missing = frozenset(f for f in ("model", "prompt") if record.get(f) in (None, ""))
    problems.extend(f"line {number}: {field}: required" for field in sorted(missing))
    if "model" in missing:
        return None, problems  # no model, no rules to check the rest against
    values = {
        field: _convert(field, record.get(field), from_csv=from_csv)
        for field in _FIELDS
        if field in record
    }
    values.setdefault("prompt", "")
    if values["prompt"] is None:
        values["prompt"] = ""
    request = QueueRequest(**values)
    given = safe_stem(str(record["name"])) if record.get("name") else None
    line = BatchLine(
        number=number,
        request=request,
        name=given or _default_name(number, request),
        unchecked=missing,
        given_name=given,
    )
    return line, problems


def read_batch(path: str | os.PathLike[str]) -> tuple[list[BatchLine], list[str]]:
    """Parse a batch file; returns the lines and every problem found (by line number).

    The lines include those with problems (see :func:`_line_to_request`); an unreadable
    file gives no lines and one problem that says why.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"cannot read {source}: {exc}"]
    if source.suffix.lower() == ".csv":
        return _read_csv(text)
    return _read_jsonl(text)


def _jsonl_records(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            yield number, f"invalid JSON ({exc.args[0].split(':')[0]})"
            continue
        yield number, record if isinstance(record, dict) else "expected a JSON object"


def _csv_records(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text))
    for record in reader:
        if None in record:
            yield reader.line_num, "more values than header columns"
        else:
            yield reader.line_num, dict(record)


def _read_jsonl(text: str) -> tuple[list[BatchLine], list[str]]:
    return _collect(_jsonl_records(text), from_csv=False)


def _read_csv(text: str) -> tuple[list[BatchLine], list[str]]:
    return _collect(_csv_records(text), from_csv=True)


def _collect(
    records: Iterable[tuple[int, dict[str, Any] | str]], *, from_csv: bool
) -> tuple[list[BatchLine], list[str]]:
    """Turn (line number, record or problem) pairs into lines and numbered problems."""
    lines: list[BatchLine] = []
    problems: list[str] = []
    for number, record in records:
        if isinstance(record, str):
            problems.append(f"line {number}: {record}")
            continue
        line, found = _line_to_request(number, record, from_csv=from_csv)
        problems.extend(found)
        if line is not None:
            lines.append(line)
    if not lines and not problems:
        problems.append("the batch file has no requests")
    return lines, problems


def check_batch(lines: Iterable[BatchLine], catalogue: Mapping[str, AudioModel]) -> list[str]:
    """Every rule broken by every line, against the model catalogue."""
    problems = []
    for line in lines:
        model = catalogue.get(line.request.model)
        if model is None:
            problems.append(f"line {line.number}: model: unknown model {line.request.model!r}")
            continue
        for problem in queue_problems(line.request, model):
            if problem.field not in line.unchecked:
                problems.append(f"line {line.number}: {problem.field}: {problem.message}")
    return problems


def sorted_problems(*groups: Iterable[str]) -> list[str]:
    """Problems of several checks in one list: by line number, those of no line first."""

    def line_of(problem: str) -> int:
        match = _LINE_NUMBER.match(problem)
        return int(match.group(1)) if match else 0

    return sorted((p for group in groups for p in group), key=line_of)


def manifest_rows(entries: Iterable[JournalEntry]) -> list[dict[str, Any]]:
    """One manifest record per batch line, from the journal (the source of truth)."""
    rows = []
    for entry in entries:
        number = _line_number(entry.key or "")
        if number is None:
            continue
        seconds = None
        if entry.finished_at is not None and entry.queued_at is not None:
            seconds = round(entry.finished_at - entry.queued_at, 3)
        rows.append(
            {
                "line": number,
                "model": entry.model,
                "prompt": entry.request.prompt,
                "state": entry.state.value,
                "queue_id": entry.queue_id,
                "file": Path(entry.path).name if entry.path else None,
                "bytes": entry.size,
                "content_type": entry.content_type,
                "seconds": seconds,
                "quote": entry.estimate_usd,
                "error": entry.error,
            }
        )
    return sorted(rows, key=lambda row: row["line"])  # stable: journal order within a line
