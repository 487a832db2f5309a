"""``--json``: the command's results as JSON Lines on stdout, one object per line.

Every object has an ``event`` key saying what it is (``model``, ``voice``, ``quote``,
``audio``, ``line``, ``summary``, ``plan``, ``estimate``, ``status``, ``problem``,
``error``); docs/cli.md lists the keys of each. Nothing else is
written to stdout in ``--json`` mode: messages, logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["emit", "json_mode"]


def json_mode(args: argparse.Namespace) -> bool:
    """Whether the command was given ``--json``."""
    return bool(getattr(args, "json", False))


def emit(event: str, **fields: Any) -> None:
    """Write one JSON object (``{"event": event, **fields}``) as a line on stdout."""
    print(json.dumps({"event": event, **fields}), file=sys.stdout, flush=True)
