"""The session's options, declared once: ``AsyncSession(**options)`` and ``VeniceAudio(**options)``.

:class:`SessionOptions` is the one list of names and types; both constructors take it as
``**options: Unpack[SessionOptions]`` (so a type checker refuses a misspelt keyword and an
IDE lists every one with its type), :func:`check_options` refuses a wrong name or type at
run time naming the public class, and the wiring fills in the defaults.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict
from urllib.parse import urlsplit, urlunsplit

from .._core.clock import Clock
from .._core.config import Limits, RateLimits, RetryPolicy, Timeouts
from .._core.environment import REDIS_URL_VAR, redis_url_from_env
from .._core.models import AudioModel
from .._http.transport import HttpSession
from .._ledger.journal import Journal
from .._ledger.ledger import JournalSource
from .._polling.estimator import PollingBounds
from .._polling.release import RELEASE_MODES, ReleaseMedia
from .._rate.budget import RequestBudget
from .._rate.redis_budget import RedisBudget

log = logging.getLogger("venice_audio_async")

__all__ = ["SessionOptions", "check_options", "shared_budget_from_env"]


class SessionOptions(TypedDict, total=False):
    """The keyword arguments of :class:`AsyncSession` and :class:`VeniceAudio`, all optional.

    Each is documented (with its default) in the ``Args:`` of those two classes.

    .. versionadded:: 0.1.0
    """

    api_key: str | None
    base_url: str | None
    timeouts: Timeouts | None
    retry: RetryPolicy | None
    rate_limits: RateLimits | None
    limits: Limits | None
    polling: PollingBounds | None
    output_dir: str | os.PathLike[str] | None
    release_media: ReleaseMedia
    validate: bool
    catalogue: Sequence[AudioModel] | None
    http_session: HttpSession | None
    clock: Clock | None
    budget: RequestBudget | None
    allow_insecure_http: bool
    journal: JournalSource | None
    max_spend_usd: float | None


def _instance(*types: type) -> Callable[[object], bool]:
    return lambda value: isinstance(value, types)


def _has(*methods: str) -> Callable[[object], bool]:
    return lambda value: all(callable(getattr(value, name, None)) for name in methods)


def _models(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(model, AudioModel) for model in value)
    )


_PATH = (str, os.PathLike)

#: What each option must be (``None`` aside, allowed by all but three), and how to say it
#: with public names only.
_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "api_key": (_instance(str), "a str"),
    "base_url": (_instance(str), "a str"),
    "timeouts": (_instance(Timeouts), "a Timeouts"),
    "retry": (_instance(RetryPolicy), "a RetryPolicy"),
    "rate_limits": (_instance(RateLimits), "a RateLimits"),
    "limits": (_instance(Limits), "a Limits"),
    "polling": (_instance(PollingBounds), "a PollingBounds"),
    "output_dir": (_instance(*_PATH), "a str or os.PathLike (a directory)"),
    "release_media": (lambda value: value in RELEASE_MODES, "one of " + "/".join(RELEASE_MODES)),
    "validate": (_instance(bool), "a bool"),
    "catalogue": (_models, "a sequence of AudioModel"),
    "http_session": (_instance(HttpSession), "an aiohttp.ClientSession"),
    "clock": (_has("monotonic", "time", "sleep"), "a Clock (monotonic, time, sleep)"),
    "budget": (_has("acquire", "record_response"), "a RequestBudget (acquire, record_response)"),
    "allow_insecure_http": (_instance(bool), "a bool"),
    "journal": (_instance(*_PATH, Journal), "a str, os.PathLike or Journal"),
    "max_spend_usd": (
        lambda value: isinstance(value, int | float) and not isinstance(value, bool),
        "a number (USD)",
    ),
}
_NOT_NONE = frozenset({"release_media", "validate", "allow_insecure_http"})


def check_options(owner: str, options: Mapping[str, object]) -> None:
    """Refuse an unknown option or one of the wrong type, before anything is built.

    Raises:
        TypeError: naming ``owner`` (``"AsyncSession"``), the option, and the public type
            it must be.
        ValueError: an unknown ``release_media``.
    """
    for name, value in options.items():
        check = _CHECKS.get(name)
        if check is None:
            close = difflib.get_close_matches(name, _CHECKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}")
        if value is None and name not in _NOT_NONE:
            continue
        accepts, expected = check
        if not accepts(value):
            error = ValueError if name == "release_media" and isinstance(value, str) else TypeError
            raise error(f"{owner}({name}=...) must be {expected}, got {value!r}")


#: The Redis URLs already announced in the log (once per process each, not per session).
_ANNOUNCED: set[str] = set()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def shared_budget_from_env(
    api_key: str | None, clock: Clock, rate_limits: RateLimits
) -> RedisBudget | None:
    """A :class:`RedisBudget` on ``VENICE_REDIS_URL`` when it is set (the session was given
    no ``budget=``), shared by every process on the same key; else ``None``.

    Without an API key there is nothing to name the shared keys by (and nothing paid can
    be sent): the session keeps its own budget, said at DEBUG.

    Raises:
        ImportError: the ``redis`` extra is not installed; says how to install it or to
            unset the variable.
    """
    url = redis_url_from_env()
    if url is None:
        return None
    if not api_key:
        log.debug(
            "%s is set but there is no API key: the session keeps its own budget", REDIS_URL_VAR
        )
        return None
    try:
        budget = RedisBudget.from_url(url, api_key=api_key, clock=clock, rate_limits=rate_limits)
    except ImportError as error:
        raise ImportError(
            f"{REDIS_URL_VAR} is set, so the session would share its request budget through "
            "Redis, which needs the redis extra: pip install 'venice-audio-async[redis]' "
            f"(or unset {REDIS_URL_VAR}, or pass budget=)"
        ) from error
    shown = _without_password(url)
    if shown not in _ANNOUNCED:
        _ANNOUNCED.add(shown)
        log.info(
            "%s is set: sessions share one request budget through Redis at %s", REDIS_URL_VAR, shown
        )
    return budget
