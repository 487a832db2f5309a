"""The model catalogue the fake server ships with.

``catalogue-2026-04-20.json`` (next to this module) holds the ten ``type: "music"`` rows that
Venice's ``GET /models?type=music`` returned on 2026-04-20: ids, names, ``created`` stamps,
pricing (float noise included), limits, voices, formats and every other ``model_spec`` key and
value as published. Two deliberate differences from the capture:

* every ``description`` is a short summary written for this project (Venice's own prose is
  not copied);
* ``elevenlabs-sound-effects-v2`` carries ``"supports_loop": true``. The April capture predates
  the ``loop`` request field (added to the spec on 2026-07-31), and Venice's own agent docs
  name this model as the one that supports it, so the fake server accepts ``loop`` for it and
  rejects it everywhere else.

Prices move over time; tests should read them from the catalogue rather than hard-code them.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["DEFAULT_CATALOGUE_FILE", "load_default_catalogue"]

_PACKAGE = __name__.rpartition(".")[0]

#: File name of the bundled catalogue inside this package.
DEFAULT_CATALOGUE_FILE = "catalogue-2026-04-20.json"


def load_default_catalogue() -> list[dict[str, Any]]:
    """Return a fresh copy of the bundled model rows (the ``data`` list of the envelope).

    Each call parses the file again, so callers may mutate the result freely.

    Raises:
        OSError: the data file is missing from the installation.
        ValueError: the data file is not the expected envelope.
    """
    text = resources.files(_PACKAGE).joinpath(DEFAULT_CATALOGUE_FILE).read_text("utf-8")
    envelope = json.loads(text)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), list):
        raise ValueError(f"{DEFAULT_CATALOGUE_FILE} is not a models envelope")
    rows: list[dict[str, Any]] = envelope["data"]
    return rows
