"""The session's options: one declaration, checked at run time with public names, the
environment variables that fill their defaults, and their documentation."""

from __future__ import annotations

import inspect
import logging
import re
import sys
from typing import Any, get_type_hints

import pytest

import venice_audio_async as v
import venice_audio_async.testing
from venice_audio_async._cli.parser import build_parser
from venice_audio_async._core.config import DEFAULT_BASE_URL
from venice_audio_async.budget import LocalBudget, RedisBudget
from venice_audio_async.testing import FakeServer
from venice_audio_async.types import SessionOptions

from ..conftest import API_KEY
from ..redis_server import RedisServer

OPTIONS = list(SessionOptions.__annotations__)


def _args_section(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Args:\n(.*?)(?:^\S|\Z)", doc, re.S | re.M)
    assert match, f"{cls.__name__} has no Args: section"
    return match.group(1)


@pytest.mark.parametrize("cls", [v.AsyncSession, v.VeniceAudio], ids=lambda c: c.__name__)
def test_every_option_is_documented_in_args(cls: type) -> None:
    """Every keyword of the one declaration has its entry in the class's Args: section,
    and the section documents nothing else."""
    section = _args_section(cls)
    documented = re.findall(r"^    (\w+):", section, re.M)
    assert documented == OPTIONS


def test_both_constructors_document_the_options_alike() -> None:
    """The two Args: sections are one text (each class's own help shows it in full), so an
    option's description cannot drift between the async and the sync client."""
    assert _args_section(v.AsyncSession) == _args_section(v.VeniceAudio)


def test_both_constructors_take_the_one_declaration() -> None:
    """AsyncSession and VeniceAudio take exactly ``**options: Unpack[SessionOptions]``."""
    for cls in (v.AsyncSession, v.VeniceAudio):
        parameters = list(inspect.signature(cls).parameters.values())
        assert [(p.name, p.kind) for p in parameters] == [
            ("options", inspect.Parameter.VAR_KEYWORD)
        ]
        hints = get_type_hints(cls.__init__, include_extras=True)
        assert hints["options"].__args__ == (SessionOptions,)


@pytest.mark.parametrize(
    ("option", "value", "public"),
    [
        ("rate_limits", {"queue_per_minute": 10}, "RateLimits"),
        ("timeouts", 5, "Timeouts"),
        ("retry", 3, "RetryPolicy"),
        ("limits", "x", "Limits"),
        ("polling", 1, "PollingBounds"),
        ("journal", 5, "Journal"),
        ("validate", "no", "bool"),
        ("catalogue", "x", "AudioModel"),
        ("clock", 1, "Clock"),
        ("budget", 1, "RequestBudget"),
        ("max_spend_usd", "3", "number"),
        ("output_dir", 3, "os.PathLike"),
    ],
)
def test_a_wrong_type_is_refused_naming_the_public_class(
    option: str, value: object, public: str
) -> None:
    """Before anything is built, naming the option and the public class (never a private
    module path)."""
    bad: dict[str, Any] = {option: value}
    with pytest.raises(
        TypeError, match=rf"AsyncSession\({option}=\.\.\.\) must be .*{public}"
    ) as e:
        v.AsyncSession(api_key=API_KEY, **bad)
    assert "_core" not in str(e.value)
    assert "venice_audio_async." not in str(e.value)


def test_a_wrong_type_on_the_sync_client_names_it() -> None:
    with pytest.raises(TypeError, match=r"VeniceAudio\(rate_limits=\.\.\.\) must be a RateLimits"):
        v.VeniceAudio(api_key=API_KEY, rate_limits={"queue_per_minute": 10})  # type: ignore[arg-type]


def test_a_misspelt_keyword_is_refused_at_run_time() -> None:
    """``**options`` accepts any name at run time: a misspelt one is refused, with a hint."""
    options: dict[str, Any] = {"api_kee": API_KEY}
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument 'api_kee' \(did you mean 'api_key'\?\)"
    ):
        v.AsyncSession(**options)


def test_none_means_the_default() -> None:
    options: dict[str, Any] = dict.fromkeys(OPTIONS)
    for required in ("release_media", "validate", "allow_insecure_http"):
        del options[required]
    session = v.AsyncSession(**options)
    assert session._parts.client.base_url == DEFAULT_BASE_URL


# ---------------------------------------------------------------------- environment


def test_one_api_key_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key from VENICE_API_KEY for the session, the client and a Redis budget's
    namespace; a blank variable counts as unset."""
    monkeypatch.setenv("VENICE_API_KEY", "from-env")
    assert "api_key=set" in repr(v.AsyncSession())
    assert (
        RedisBudget.from_url("redis://127.0.0.1:1").namespace
        == RedisBudget.from_url("redis://127.0.0.1:1", api_key="from-env").namespace
    )
    monkeypatch.setenv("VENICE_API_KEY", "  ")
    assert "api_key=missing" in repr(v.AsyncSession())


@pytest.mark.anyio
async def test_base_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, fake_server: FakeServer
) -> None:
    """VENICE_BASE_URL is the default of AsyncSession, VeniceClient, VeniceAudio and the
    CLI's --base-url; a given base_url wins. The session really talks to it."""
    monkeypatch.setenv("VENICE_BASE_URL", fake_server.url)
    async with v.AsyncSession(api_key=API_KEY) as session:
        assert session._parts.client.base_url == fake_server.url
        assert await session.models()  # answered by the fake
    assert v.VeniceClient(api_key=API_KEY).base_url == fake_server.url
    assert v.AsyncSession(base_url="http://127.0.0.1:9/x")._parts.client.base_url == (
        "http://127.0.0.1:9/x"
    )
    assert build_parser().parse_args(["models"]).base_url == fake_server.url
    client = v.VeniceAudio(api_key=API_KEY)
    try:
        assert f"base_url='{fake_server.url}'" in repr(client)
    finally:
        client.close()
    monkeypatch.delenv("VENICE_BASE_URL")
    assert v.VeniceClient().base_url == DEFAULT_BASE_URL
    assert build_parser().parse_args(["models"]).base_url == DEFAULT_BASE_URL


@pytest.mark.anyio
async def test_redis_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    fake_server: FakeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With VENICE_REDIS_URL set and no budget= the session shares a RedisBudget (said
    once at INFO, the password never shown); a given budget wins; unset, a LocalBudget."""
    url = redis_server.url.replace("redis://", "redis://:s3cret@", 1)
    monkeypatch.setenv("VENICE_REDIS_URL", url)
    monkeypatch.setattr("venice_audio_async._session.options._ANNOUNCED", set())
    caplog.set_level(logging.INFO, logger="venice_audio_async")
    first = v.AsyncSession(api_key=API_KEY, base_url=fake_server.url)
    second = v.AsyncSession(api_key=API_KEY, base_url=fake_server.url)
    assert isinstance(first._parts.budget, RedisBudget)
    assert first._parts.budget.namespace == second._parts.budget.namespace  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records if "VENICE_REDIS_URL" in r.getMessage()]
    assert len(said) == 1
    assert "s3cret" not in said[0]
    assert "***" in said[0]
    mine = LocalBudget(clock=v.testing.ManualClock(), rates={})
    assert v.AsyncSession(api_key=API_KEY, budget=mine)._parts.budget is mine
    monkeypatch.delenv("VENICE_REDIS_URL")
    assert isinstance(v.AsyncSession(api_key=API_KEY)._parts.budget, LocalBudget)


def test_redis_url_without_the_extra_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENICE_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # as if not installed
    with pytest.raises(ImportError, match=r"VENICE_REDIS_URL is set.*\[redis\].*unset"):
        v.AsyncSession(api_key=API_KEY)


BAD: Any = "40"  # a wrong type, unseen by the type checker


@pytest.mark.parametrize(
    ("make", "public"),
    [
        (lambda: v.RateLimits(queue_per_minute=BAD), r"RateLimits\(queue_per_minute=\.\.\.\)"),
        (lambda: v.Timeouts(read=BAD), r"Timeouts\(read=\.\.\.\)"),
        (lambda: v.RetryPolicy(max_backoff=BAD), r"RetryPolicy\(max_backoff=\.\.\.\)"),
    ],
)
def test_a_settings_field_of_the_wrong_type_names_the_class(make: Any, public: str) -> None:
    """Not a bare "must be real number, not str" from inside: the class and the field."""
    with pytest.raises(TypeError, match=rf"^{public} must be a number, got"):
        make()
