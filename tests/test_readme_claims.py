"""What README.md and docs/ claim agrees with the repository and with their own tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: The page with the benchmarks' tables, the latency table among them.
PERFORMANCE = ROOT / "docs" / "performance.md"

# Names a page may mention that are not files of the repository: files the library writes.
WRITTEN_BY_THE_LIBRARY = {"manifest.jsonl", ".venice-fake-server.jsonl"}

# Files of the design notes and the wire contract that live outside the repository: a user
# who reads the README never has them.
OUTSIDE_THE_REPOSITORY = ("POLLING.md", "AUDIO_API.md", "DESIGN.md", "STYLE.md")


def _cited_paths(text: str) -> set[str]:
    quoted = re.findall(r"`([\w./-]+\.(?:py|md|jsonl|json|toml|sh))`", text)
    linked = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    return set(quoted) | set(linked)


def _exists(name: str) -> bool:
    if name in WRITTEN_BY_THE_LIBRARY:
        return True
    if (ROOT / name).exists() or (ROOT / "docs" / name).exists():
        return True
    # A path in the package (``_core/errors.py``), or a bare module name, names a file of it.
    if (ROOT / "venice_audio_async" / name).exists():
        return True
    return "/" not in name and any(ROOT.glob(f"venice_audio_async/**/{name}"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_file_is_in_the_repository(page: Path) -> None:
    """A file a page names can be opened by its reader."""
    missing = sorted(name for name in _cited_paths(page.read_text()) if not _exists(name))
    assert not missing, f"{page.name} cites files not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_cites_notes_or_issues_readers_do_not_have(page: Path) -> None:
    """No design note from outside the repository, no issue number."""
    text = page.read_text()
    found = [name for name in OUTSIDE_THE_REPOSITORY if name in text]
    found += re.findall(r"\bissue \d+", text)
    assert not found, f"{page.name} cites {found}"


def _session_rows() -> dict[str, tuple[float, float]]:
    """Workload -> (retrieves/job, delay p50) of the "session" rows of the latency table."""
    rows = {}
    for line in PERFORMANCE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) > 5 and cells[0] in {"A", "B", "C", "D"} and cells[1] == "session":
            rows[cells[0]] = (float(cells[2]), float(cells[4]))
    return rows


def test_the_headline_agrees_with_the_latency_table() -> None:
    """The README's opening claim on delay and retrieves per job is the table's (on the
    performance page), not a wish."""
    rows = _session_rows()
    assert set(rows) == {"A", "B", "C", "D"}
    text = (ROOT / "README.md").read_text()
    headline = text[: text.index("## Set up")]
    low, high = (
        float(x)
        for x in re.search(r"median (\d+\.\d+)\N{EN DASH}(\d+\.\d+) s", headline).groups()  # type: ignore[union-attr]
    )
    p50s = [p50 for _, p50 in rows.values()]
    assert (low, high) == (round(min(p50s), 1), round(max(p50s), 1))
    full_window = re.search(r"about (\d+)\s+`retrieve` calls per job", headline)
    assert full_window is not None
    assert round(rows["B"][0]) == int(full_window.group(1))
    spread = re.search(r"\((\d+)\N{EN DASH}(\d+)\s+for small batches\)", headline)
    assert spread is not None
    others = [rows[w][0] for w in "ACD"]
    assert int(spread.group(1)) <= min(others)
    assert max(others) < int(spread.group(2)) + 1


#: The README's rows of the table of latency on one key, and the benchmark scenario of each.
_ONE_KEY_ROWS = {
    "1 process, 36 jobs": "1x36 reference",
    "3 processes x 12 jobs, one shared `RedisBudget`": "3x12 Redis",
    "3 processes x 12 jobs, each its own budget (web workers)": "3x12 no Redis",
    "1 x 12 jobs, 60/min over all audio endpoints, stated nowhere": "pooled 60",
    "1 x 12 jobs, an outside client spending half the key": "outside half",
}
#: Marks the performance page's table of the final `benchmarks/multiprocess.py` run.
_ONE_KEY_MARK = "<!-- multiprocess: final -->"


def _table_after(text: str, mark: str) -> dict[str, list[str]]:
    """The rows (by first cell) of the first markdown table after ``mark`` in ``text``."""
    rows: dict[str, list[str]] = {}
    lines = text[text.index(mark) :].splitlines()[1:]
    started = False
    for line in lines:
        line = line.strip()
        if not line.startswith("|"):
            if started:
                break
            continue
        started = True
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_readme_table_on_one_key_is_the_benchmarks() -> None:
    """The README's table of several processes and other limits on one key shows the
    figures of the performance page's final `benchmarks/multiprocess.py` run, rounded."""
    measured = _table_after(PERFORMANCE.read_text(), _ONE_KEY_MARK)
    readme = (ROOT / "README.md").read_text()
    shown = _table_after(readme, "`benchmarks/multiprocess.py`")
    assert set(shown) - {"on one key", "---"} == set(_ONE_KEY_ROWS)
    for row, scenario in _ONE_KEY_ROWS.items():
        p50, p95, _max, refused = (float(x) for x in measured[scenario][:4])
        delay, errors = shown[row]
        assert delay == f"{p50:.1f} / {p95:.1f} s", row
        assert errors == f"{refused:g}", row
