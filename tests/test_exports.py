"""The public surface is explicit, sorted and complete."""

from __future__ import annotations

import importlib
import pkgutil

import venice_audio_async
import venice_audio_async.testing


def test_all_is_sorted_and_unique() -> None:
    """__all__ is sorted and has no duplicates."""
    names = venice_audio_async.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_all_names_exist() -> None:
    """Every name in __all__ is importable from the package."""
    for name in venice_audio_async.__all__:
        assert hasattr(venice_audio_async, name), name


def test_private_modules_public_names_are_exported() -> None:
    """Every public class or function defined in a private module is re-exported (or internal)."""
    internal = {
        # building blocks used between layers; not part of the user-facing surface
        "BatchLine",
        "BatchProgress",
        "DurationEstimator",
        "EndpointStatistics",
        "HttpTransport",
        "ModelDurationStats",
        "OutcomeHook",
        "OwnerLock",
        "ReleaseHook",
        "SpendTracker",
        "ReleaseMode",
        "RequestLimiter",
        "Scheduler",
        "SchedulerCounts",
        "SinkFactory",
        "JsonAnswer",
        "ResponseObserver",
        "error_from_response",
        "safe_stem",
        "sniff_format",
    }
    exported = set(venice_audio_async.__all__)
    for info in pkgutil.iter_modules(venice_audio_async.__path__):
        if not info.name.startswith("_") or info.name == "__main__":
            continue
        module = importlib.import_module(f"venice_audio_async.{info.name}")
        for name in getattr(module, "__all__", []):
            if name in internal or name.startswith("_"):
                continue
            assert name in exported or not name[0].isupper(), f"{info.name}.{name} not exported"


def test_testing_all_is_sorted() -> None:
    """The testing module's __all__ is sorted and importable."""
    names = venice_audio_async.testing.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(venice_audio_async.testing, name)


def test_version_is_a_string() -> None:
    """__version__ comes from the installed metadata."""
    assert isinstance(venice_audio_async.__version__, str)
    assert venice_audio_async.__version__ != "0+unknown"


def test_library_does_not_import_rich() -> None:
    """Importing the package (and its session) never pulls in the optional CLI extra."""
    import subprocess
    import sys

    code = (
        "import sys, venice_audio_async, venice_audio_async._session; print('rich' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
