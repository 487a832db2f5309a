"""Every Python block of README.md and the docs pages is run by a named test, every public
module has an API reference page, and the README's links into the docs land on a heading.

The examples themselves run in tests/test_readme.py (its ``EXAMPLES`` table names the test of
each); ``mkdocs build --strict`` in .ci/run checks the site's own links and anchors.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import venice_audio_async

from . import test_readme
from .test_readme import EXAMPLES, PAGES, PYTHON_BLOCK, README, ROOT

DOCS = ROOT / "docs"

#: A block that is not run says so, with its reason, on the line just before its fence:
#: ``<!-- not run: why -->``. Keep these very few.
NOT_RUN = re.compile(r"<!-- not run: (\S.*?) -->\n```python")
MOST_NOT_RUN = 2


def _page_blocks(page: Path) -> list[tuple[str, bool]]:
    """Each Python block of ``page``, and whether it is marked as not run."""
    text = page.read_text()
    not_run = {match.end() for match in NOT_RUN.finditer(text)}
    return [
        (match.group(1), match.start() + len("```python") in not_run)
        for match in re.finditer(PYTHON_BLOCK, text, re.S)
    ]


def test_the_pages_are_the_readme_and_every_docs_page() -> None:
    """The examples' pages are found where the site's are."""
    assert README in PAGES
    assert {page.name for page in PAGES} >= {"sessions.md", "polling.md", "testing.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_is_run(page: Path) -> None:
    """A Python block of any page is run by the test its marker names (a new block without
    one fails here), unless it says why it is not run."""
    for block, not_run in _page_blocks(page):
        if not_run:
            continue
        markers = [marker for marker in EXAMPLES if marker in block]
        assert markers, f"no test runs this example of {page.name}:\n{block}"
        for marker in markers:
            assert hasattr(test_readme, EXAMPLES[marker]), EXAMPLES[marker]


def test_every_marker_finds_its_block_and_few_are_not_run() -> None:
    """Each marker still names a block (a moved or edited block is noticed), every block has
    a line of prose before it (the runner finds blocks by it), and few blocks are exempt."""
    blocks = [block for page in PAGES for block in _page_blocks(page)]
    assert len(blocks) == len(test_readme._blocks())
    for marker, test in EXAMPLES.items():
        assert any(marker in block for block, _ in blocks), marker
        assert hasattr(test_readme, test), test
    assert sum(not_run for _, not_run in blocks) <= MOST_NOT_RUN


def test_a_block_marked_not_run_is_recognised(tmp_path: Path) -> None:
    """The exemption needs its marker on the line before the fence, and a reason."""
    page = tmp_path / "page.md"
    page.write_text(
        "Prose.\n\n<!-- not run: a fragment -->\n```python\nx\n```\n\n"
        "<!-- not run: -->\n```python\ny\n```\n\nMore.\n\n```python\nz\n```\n"
    )
    assert _page_blocks(page) == [("x\n", True), ("y\n", False), ("z\n", False)]


def _public_modules() -> list[str]:
    """The package and each module or subpackage of it a user may import by name."""
    found = [venice_audio_async.__name__]
    for module in pkgutil.walk_packages(
        venice_audio_async.__path__, prefix=f"{venice_audio_async.__name__}."
    ):
        parts = module.name.split(".")
        if not any(part.startswith("_") for part in parts[1:]):
            found.append(module.name)
    return sorted(found)


def _nav_pages() -> set[str]:
    """The pages mkdocs.yml's nav lists (each entry a ``title: page.md`` line)."""
    text = (ROOT / "mkdocs.yml").read_text()
    return set(re.findall(r"^\s*- [^:\n]+: (\S+\.md)$", text[text.index("\nnav:") :], re.M))


def test_every_public_module_has_a_reference_page() -> None:
    """docs/reference/<module>.md renders the module (``::: module``: its ``__all__``) and is
    in the site's navigation. A new public module needs its page and its line in the nav."""
    modules = _public_modules()
    assert {"venice_audio_async", "venice_audio_async.testing"} <= set(modules)
    nav = _nav_pages()
    for module in modules:
        page = DOCS / "reference" / f"{module}.md"
        assert page.exists(), f"no API reference page for {module}: add {page.relative_to(ROOT)}"
        assert re.search(rf"^::: {re.escape(module)}$", page.read_text(), re.M), page
        assert f"reference/{module}.md" in nav, f"mkdocs.yml's nav lacks {page.name}"


def test_every_docs_page_is_in_the_navigation() -> None:
    """No page is built but unreachable (mkdocs only notes those)."""
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert pages == _nav_pages()


def _slug(title: str) -> str:
    """A heading's anchor as the site's toc extension makes it (GitHub agrees for ours)."""
    title = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", title)


def _headings(page: Path) -> set[str]:
    """The anchors of a page's headings."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(title) for title in re.findall(r"^#+ (.*)$", text, re.M)}


def test_slugs_are_the_sites() -> None:
    """The slugs of headings with punctuation, as the built site names them."""
    assert _slug("A web handler's jobs, fetched again") == "a-web-handlers-jobs-fetched-again"
    assert _slug("1. Latency at the budget (`benchmarks/scheduling.py`)") == (
        "1-latency-at-the-budget-benchmarksschedulingpy"
    )


def test_readme_links_into_the_docs_land() -> None:
    """Every link of the README to a docs page names a page that exists, and a heading of it."""
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", README.read_text())
    assert len(links) >= 10
    for path, anchor in links:
        page = ROOT / path
        assert page.exists(), path
        if anchor:
            assert anchor in _headings(page), f"{path} has no heading #{anchor}"


def test_the_readme_is_short_and_keeps_its_set_up_commands() -> None:
    """At most 250 lines (the rest is in the docs), with the test command CI runs verbatim."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    ci = (ROOT / ".ci" / "run").read_text()
    command = ci.split("keep in sync with README.md")[1].splitlines()[1]
    assert command.startswith("python3 -m venv .venv && ")
    set_up = text[text.index("## Set up") : text.index("## A first generation")]
    assert f"```bash\n{command}\n```" in set_up


def test_the_reference_reads_the_docstrings_rest_marks() -> None:
    """The site's hook turns reST roles, a "::" before a code block and versionadded into
    prose (the rendered HTML of a docstring that has each)."""
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "mkdocs_hooks.py")
    assert spec is not None
    assert spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    html = (
        "<p>Use :class:<code>AsyncSession</code> and :meth:<code>wait_for</code>.</p>\n"
        "<p>::</p>\n<pre><code>a::b\n</code></pre>\n<p>So across cells::</p>\n"
        "<p>.. versionadded:: 0.1.0</p>"
    )
    assert hooks.clean(html) == (
        "<p>Use <code>AsyncSession</code> and <code>wait_for</code>.</p>\n"
        "<pre><code>a::b\n</code></pre>\n<p>So across cells:</p>\n"
        "<p><em>New in version 0.1.0.</em></p>"
    )
