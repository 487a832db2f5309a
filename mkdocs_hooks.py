"""MkDocs hooks (mkdocs.yml ``hooks:``): the API reference reads the docstrings' few
reStructuredText habits as prose.

The docstrings are written for ``help()`` and IDEs, in Google style with some reST: roles
(``:class:`X```), a paragraph ending ``::`` before a code block, and
``.. versionadded::``. The reference renders them as Markdown, which would show those marks
as they are; this turns each into what it means, on the rendered HTML of every page.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj|const):(<code>)")
_BARE_LITERAL_MARK = re.compile(r"<p>::</p>\n?")
_LITERAL_MARK = re.compile(r"::</p>")
_VERSION_ADDED = re.compile(r"<p>\.\. versionadded:: ([^<]+)</p>")


def clean(html: str) -> str:
    """The HTML of a page with the reST marks of its docstrings read."""
    html = _ROLE.sub(r"\1", html)
    html = _BARE_LITERAL_MARK.sub("", html)
    html = _LITERAL_MARK.sub(":</p>", html)
    return _VERSION_ADDED.sub(r"<p><em>New in version \1.</em></p>", html)


def on_page_content(html: str, **kwargs: Any) -> str:
    """MkDocs' hook for each page's rendered content."""
    return clean(html)
