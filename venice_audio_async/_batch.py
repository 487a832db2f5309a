"""Batch files: one generation per line, read and checked before anything is spent.

A batch is JSON Lines (one object per line) or CSV (a header row naming the fields). The
fields are those of :class:`~venice_audio_async.QueueRequest` plus an optional ``name`` for
the output file. Every problem of every line is collected, so a batch is fixed in one go.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._audio import safe_stem
from ._journal import JournalEntry
from ._models import AudioModel, QueueRequest
from ._validation import queue_problems

__all__ = ["BatchLine", "check_batch", "manifest_rows", "read_batch"]

_FIELDS = {a.name: a for a in attrs.fields(QueueRequest)}
_INTS = {"duration_seconds"}
_FLOATS = {"speed"}
_BOOLS = {"force_instrumental", "lyrics_optimizer", "loop"}
_EXTRA = {"name"}


@attrs.frozen
class BatchLine:
    """One request of a batch, with its line number (1-based) and output name."""

    number: int
    request: QueueRequest
    name: str

    @property
    def key(self) -> str:
        """Its key in the journal."""
        return f"line-{self.number}"


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
    problems = []
    unknown = sorted(set(record) - set(_FIELDS) - _EXTRA)
    if unknown:
        problems.append(f"line {number}: unknown field(s) {', '.join(unknown)}")
    for required in ("model", "prompt"):
        if record.get(required) in (None, ""):
            problems.append(f"line {number}: {required}: required")
    if problems:
        return None, problems
    values = {
        field: _convert(field, record.get(field), from_csv=from_csv)
        for field in _FIELDS
        if field in record
    }
    request = QueueRequest(**values)
    name = record.get("name") or f"{number:04d}-{safe_stem(str(request.prompt), max_length=40)}"
    return BatchLine(number=number, request=request, name=safe_stem(str(name))), []


def read_batch(path: str | os.PathLike[str]) -> tuple[list[BatchLine], list[str]]:
    """Parse a batch file; returns the lines and every problem found (by line number)."""
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
            problems.append(f"line {line.number}: {problem.field}: {problem.message}")
    return problems


def manifest_rows(entries: Iterable[JournalEntry]) -> list[dict[str, Any]]:
    """One manifest record per batch line, from the journal (the source of truth)."""
    rows = []
    for entry in entries:
        if entry.key is None or not entry.key.startswith("line-"):
            continue
        seconds = None
        if entry.finished_at is not None and entry.queued_at is not None:
            seconds = round(entry.finished_at - entry.queued_at, 3)
        rows.append(
            {
                "line": int(entry.key.removeprefix("line-")),
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
    return sorted(rows, key=lambda row: row["line"])
