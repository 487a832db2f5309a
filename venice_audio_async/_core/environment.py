"""The environment variables the package reads, each in one place.

``VENICE_API_KEY`` (the key), ``VENICE_BASE_URL`` (the API's base URL) and
``VENICE_REDIS_URL`` (a Redis server to share one request budget through) are read here;
``VENICE_AUDIO_LOG`` is read by :mod:`._core.logging`. docs/configuration.md lists them all.
"""

from __future__ import annotations

import os

from .config import DEFAULT_BASE_URL

__all__ = [
    "api_key_from_env",
    "base_url_from_env",
    "redis_url_from_env",
]

API_KEY_VAR = "VENICE_API_KEY"
BASE_URL_VAR = "VENICE_BASE_URL"
REDIS_URL_VAR = "VENICE_REDIS_URL"


def _read(name: str) -> str | None:
    """The variable's value, ``None`` when unset or blank (an empty export means unset)."""
    value = os.environ.get(name, "").strip()
    return value or None


def api_key_from_env(api_key: str | None = None) -> str | None:
    """``api_key`` when given, else ``VENICE_API_KEY`` (``None`` when neither is set)."""
    return api_key if api_key is not None else _read(API_KEY_VAR)


def base_url_from_env(base_url: str | None = None) -> str:
    """``base_url`` when given, else ``VENICE_BASE_URL``, else the public API's URL."""
    if base_url is not None:
        return base_url
    return _read(BASE_URL_VAR) or DEFAULT_BASE_URL


def redis_url_from_env() -> str | None:
    """``VENICE_REDIS_URL``, ``None`` when unset."""
    return _read(REDIS_URL_VAR)
