"""The installed distribution's version, ``venice_audio_async.__version__`` (the transport
sends it in ``User-Agent``)."""

from __future__ import annotations

import importlib.metadata as _metadata

__all__ = ["__version__"]

try:
    __version__ = _metadata.version("venice-audio-async")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
