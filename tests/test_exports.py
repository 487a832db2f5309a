"""The public surface is explicit, sorted and complete: what users can reach, they can import."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import types
import typing
from collections.abc import Iterator

import pytest

import venice_audio_async as v
import venice_audio_async.budget
import venice_audio_async.journal
import venice_audio_async.testing
import venice_audio_async.types

#: The public modules: the session's names, the budgets, the journal's types, the fake
#: server and the clocks, and the types beyond the session's own (catalogue, wire objects,
#: streams, sinks). Each public name has exactly one of them as its home.
PACKAGES = [
    v,
    venice_audio_async.budget,
    venice_audio_async.journal,
    venice_audio_async.testing,
    venice_audio_async.types,
]

#: Public classes a user can reach that are deliberately not exported, and why.
REACHABLE_NOT_EXPORTED = {
    # VeniceClient.transport exists for the session's budget observer; it is the aiohttp layer.
    "HttpTransport",
    # Journal's constructor takes what Journal.open builds (a connection and the owner lock).
    "OwnerLock",
    # RateLimits.from_api's client: the two VeniceClient calls it makes, named so the
    # settings need not import the client.
    "RateLimitSource",
}


def _public_names(package: types.ModuleType) -> set[str]:
    """The names ``from package import *`` would offer without __all__, less the subpackages."""
    return {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        # importing venice_audio_async.testing binds "testing" in the package: not an export
        and not (
            isinstance(value, types.ModuleType) and value.__name__.startswith(package.__name__)
        )
    }


def _private_modules(package: types.ModuleType = v) -> Iterator[types.ModuleType]:
    """The package's private modules, those of its private layer subpackages included
    (``_core.models``); the command line (``_cli``) is an application, not a library layer."""
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        parts = info.name.removeprefix(f"{package.__name__}.").split(".")
        if parts[0].startswith("_") and parts[0] != "__main__" and parts[:1] != ["_cli"]:
            yield importlib.import_module(info.name)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_sorted_and_unique(package: types.ModuleType) -> None:
    """__all__ is sorted (case-sensitively) and has no duplicates."""
    names = package.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_exactly_the_public_names(package: types.ModuleType) -> None:
    """__all__ lists every public name of the package and nothing else: no leaked imports."""
    assert set(package.__all__) - {"__version__"} == _public_names(package)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_export_is_exported_by_the_module_that_defines_it(package: types.ModuleType) -> None:
    """Each name in __all__ is in the __all__ of a private module, as the same object."""
    defined = {
        name: getattr(module, name)
        for module in (*_private_modules(v), *_private_modules(venice_audio_async.testing))
        for name in getattr(module, "__all__", [])
    }
    for name in set(package.__all__) - {"__version__"}:
        assert name in defined, f"no module of {package.__name__} exports {name}"
        assert getattr(package, name) is defined[name], name


def test_private_modules_public_names_are_exported() -> None:
    """Every public class or function defined in a private module is re-exported (or internal)."""
    internal = {
        # building blocks used between layers; not part of the user-facing surface
        "ACQUIRE",
        "AUDIO_ENDPOINTS",
        "AudioBody",
        "BACKFILL",
        "BodyReader",
        "Answer",
        "EPS",
        "EndpointFigures",
        "EndpointView",
        "Entity",
        "EntityView",
        "LEARN",
        "AnswerSignals",
        "Assumed",
        "RELEASE",
        "RULE_STEP",
        "RUNS",
        "RUNS_KEPT",
        "DEMAND",
        "AnyioDeadline",
        "BatchFlows",
        "Catalogue",
        "KeyLimits",
        "DelayedWrite",
        "Delivery",
        "Destination",
        "Destinations",
        "DueHeap",
        "DurationEstimator",
        "HeldAudio",
        "JobTable",
        "EndpointRate",
        "HttpSession",
        "HttpTransport",
        "Intent",
        "JobView",
        "JobWatch",
        "JournalSource",
        "JournalStore",
        "JsonAnswer",
        "Ledger",
        "Lifecycle",
        "LinePlan",
        "MediaReleaser",
        "ModelDurationStats",
        "ModelFits",
        "OpenCheck",
        "OwnerLock",
        "PollPolicy",
        "RedisLink",
        "RELEASE_MODES",
        "ERROR_BUDGET",
        "OVERLOADED",
        "RATE_LIMIT",
        "RECOVERY_STEPS",
        "RateLimitSource",
        "ReleaseHook",
        "ReleaseMedia",
        "RequestAttempt",
        "RequestLimiter",
        "RequestOutcome",
        "ResponseObserver",
        "ResponseLearner",
        "ResponseRecorder",
        "Results",
        "Resumer",
        "RekeyScope",
        "Retrier",
        "RunTimeBelief",
        "Scheduler",
        "SessionParts",
        "SessionResultsAPI",
        "SessionState",
        "SharedMirror",
        "SinkFactory",
        "SpendBook",
        "StatisticsCollector",
        "Snapshot",
        "EndedJobs",
        "PendingRekeys",
        "Submitter",
        "JobHold",
        "TokenTooLate",
        "TrackedJob",
        "Verdict",
        "PollVerdict",
        "WindowPacer",
        "Waiter",
        "error_from_response",
        "safe_stem",
        "sniff_format",
    }
    exported = {name for package in PACKAGES for name in package.__all__}
    listed = set()
    for module in _private_modules(v):
        for name in getattr(module, "__all__", []):
            listed.add(name)
            if name in internal or name.startswith("_"):
                continue
            assert name in exported or not name[0].isupper(), f"{module.__name__}.{name}"
    assert internal <= listed, f"no module exports {sorted(internal - listed)}: drop them here"


def _classes_in(annotation: object) -> Iterator[type]:
    """Every class named in a resolved annotation (``list[Job] | None`` -> list, Job)."""
    if isinstance(annotation, type):
        yield annotation
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        yield origin
    for arg in typing.get_args(annotation):
        yield from _classes_in(arg)


def _reachable_classes(cls: type, namespace: dict[str, object]) -> Iterator[type]:
    """Classes in the annotations of ``cls``'s public fields, its constructor and entry
    methods, and its public methods and properties, those it inherits from the package's
    classes included (``AsyncSession``'s result calls live in a base class)."""
    targets: list[object] = []
    hints = typing.get_type_hints(cls, globalns=namespace)
    for name, annotation in hints.items():
        if not name.startswith("_"):  # private attributes (``_parts``) are not what users reach
            yield from _classes_in(annotation)
    inherited = {
        name: member
        for base in reversed(cls.__mro__)
        if base.__module__.startswith("venice_audio_async")
        for name, member in vars(base).items()
        if not name.startswith("_")
    }
    own = {
        name: vars(cls)[name]
        for name in ("__init__", "__aenter__", "__anext__")
        if name in vars(cls)
    }
    for member in {**inherited, **own}.values():
        function = member.fget if isinstance(member, property) else member
        function = getattr(function, "__func__", function)  # classmethod, staticmethod
        if inspect.isfunction(function):
            targets.append(function)
    for target in targets:
        for annotation in typing.get_type_hints(target, globalns=namespace).values():
            yield from _classes_in(annotation)


def test_every_class_users_reach_is_exported() -> None:
    """A class in the signature or fields of an exported class is importable too."""
    exported = {id(getattr(package, name)) for package in PACKAGES for name in package.__all__}
    # Forward references (TYPE_CHECKING imports included) resolve among all package modules.
    namespace: dict[str, object] = {}
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("venice_audio_async."):
            namespace.update(vars(module))
    redis_asyncio = pytest.importorskip("redis.asyncio")  # RedisBudget's client type
    namespace.setdefault("Redis", redis_asyncio.Redis)
    unreachable = set()
    for package in PACKAGES:
        for name in package.__all__:
            value = getattr(package, name)
            if not isinstance(value, type):
                continue
            for cls in _reachable_classes(value, namespace):
                if (
                    cls.__module__.startswith("venice_audio_async")
                    and id(cls) not in exported
                    and cls.__name__ not in REACHABLE_NOT_EXPORTED
                ):
                    unreachable.add(f"{cls.__qualname__} (via {name})")
    assert not unreachable


def test_queue_options_are_the_optional_queue_request_fields() -> None:
    """QueueOptions (submit's and generate's typed **options) mirrors QueueRequest's options."""
    request_fields = typing.get_type_hints(v.QueueRequest)
    del request_fields["model"], request_fields["prompt"]
    assert typing.get_type_hints(v.QueueOptions) == request_fields
    assert v.QueueOptions.__optional_keys__ == frozenset(request_fields)


def test_version_is_a_string() -> None:
    """__version__ comes from the installed metadata."""
    assert isinstance(v.__version__, str)
    assert v.__version__ != "0+unknown"


def test_library_does_not_import_rich() -> None:
    """Importing the package (and its session) never pulls in the optional CLI extra."""
    code = (
        "import sys, venice_audio_async, venice_audio_async._session.session; "
        "print('rich' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_each_public_name_has_one_home() -> None:
    """No name is exported by two public modules (a clock is ``testing``'s, a budget
    ``budget``'s, a journal row ``journal``'s)."""
    homes: dict[str, list[str]] = {}
    for package in PACKAGES:
        for name in set(package.__all__) - {"__version__"}:
            homes.setdefault(name, []).append(package.__name__)
    assert not {name: where for name, where in homes.items() if len(where) > 1}


def test_names_that_moved_are_gone_from_the_top() -> None:
    """0.2 moved the budgets, the journal's types and the clocks out of the top-level
    package, and dropped ``Queued`` and ``Running`` (nothing built them): no shims."""
    moved = {
        "BudgetStatistics",
        "Clock",
        "EndpointStatistics",
        "JobState",
        "Journal",
        "JournalEntry",
        "LearnedRateLimits",
        "LocalBudget",
        "ManualClock",
        "RateWindow",
        "RedisBudget",
        "RequestBudget",
        "ResumeReport",
        "ScaledClock",
        "SystemClock",
    }
    for name in (*moved, "Queued", "Running"):
        assert not hasattr(v, name), name
    assert moved <= {name for package in PACKAGES[1:] for name in package.__all__}


def test_the_top_level_holds_about_what_a_session_user_needs() -> None:
    """The catalogue and wire types, streams, sinks and constants live in ``types``, so the
    top level stays near the session's own vocabulary (about 55 names; httpx 70, openai 54)."""
    assert len(v.__all__) <= 60, len(v.__all__)
    assert {"AudioModel", "RetrieveRequest", "FileSink", "ResultStream"} <= set(
        venice_audio_async.types.__all__
    )
    for name in venice_audio_async.types.__all__:
        assert not hasattr(v, name), name


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_has_a_docstring(package: types.ModuleType) -> None:
    """Each public module says what it holds, and each class or function it exports says
    what it is (constants and type aliases are documented where they are defined)."""
    assert package.__doc__
    missing = [
        name
        for name in package.__all__
        if (inspect.isclass(getattr(package, name)) or inspect.isfunction(getattr(package, name)))
        and not inspect.getdoc(getattr(package, name))
    ]
    assert not missing
