"""The command line's arguments: the commands, their options and the number checks.

Arguments are checked here, before any server is contacted (argparse exits with 2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from .. import __version__
from .._core.environment import base_url_from_env, redis_url_from_env
from .exits import epilog

__all__ = ["LOG_LEVELS", "build_parser"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def _number(kind: type[float] | type[int], *, positive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number, above 0 (``positive``) or at least 0."""
    bound = "above 0" if positive else "0 or more"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``venice-audio`` parser with every command."""
    parser = argparse.ArgumentParser(
        prog="venice-audio",
        description="Generate music, sound effects and voice with Venice.ai.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the table's lines
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    output = _output_options()
    common = _common_options(output)
    shared = _shared_budget_option()
    commands = parser.add_subparsers(dest="command", required=True)
    _add_models(commands, common)
    _add_quote(commands, common)
    _add_generate(commands, common, shared)
    _add_fetch(commands, common)
    _add_batch(commands, common, shared)
    _add_resume(commands, common, shared)
    _add_status(commands, output)
    return parser


def _output_options() -> argparse.ArgumentParser:
    """Options of every command, ``status`` included: ``--json`` and ``--log-level``."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json",
        action="store_true",
        help="print results as JSON Lines on stdout, one object per line (keys: see the "
        "README); messages, logs and progress go to stderr",
    )
    output.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="print the library's log to stderr from this level on (debug: every request)",
    )
    return output


def _common_options(output: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of every command that connects: where to, time scale, progress, output."""
    common = argparse.ArgumentParser(add_help=False, parents=[output])
    common.add_argument(
        "--fake",
        action="store_true",
        help="use the built-in fake server: no key, no network, no cost; playable WAV tones",
    )
    common.add_argument(
        "--base-url",
        default=base_url_from_env(),
        help="API base URL (default: $VENICE_BASE_URL, else the public API)",
    )
    common.add_argument("--api-key", help="API key (default: $VENICE_API_KEY)")
    common.add_argument(
        "--allow-insecure-http", action="store_true", help="allow plain http to remote hosts"
    )
    common.add_argument(
        "--time-scale",
        type=_number(float, positive=True),
        default=1.0,
        metavar="SCALE",
        help="real seconds per clock second, to match a time-scaled fake server (testing)",
    )
    common.add_argument("--plain", action="store_true", help="plain progress lines, no bar")
    return common


def _shared_budget_option() -> argparse.ArgumentParser:
    """``--redis``, for the commands that send paid requests."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--redis",
        metavar="URL",
        default=redis_url_from_env(),
        help="share one request budget with every process on this key through Redis "
        "(default: $VENICE_REDIS_URL; needs the redis extra)",
    )
    return shared


if TYPE_CHECKING:
    # What ``add_subparsers()`` returns: a class argparse does not name publicly.
    _Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _add_models(commands: _Commands, common: argparse.ArgumentParser) -> None:
    models = commands.add_parser("models", parents=[common], help="list the audio models")
    models.add_argument(
        "--voices", metavar="MODEL", help="list the voices of MODEL instead (voice models)"
    )


def _add_status(commands: _Commands, output: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status",
        parents=[output],
        help="tell a batch folder's state from its journal (sends nothing)",
    )
    status.add_argument("dir", help="the batch's --out folder")
    status.add_argument(
        "--requeue-unknown",
        action="store_true",
        help="tell what resume --requeue-unknown would do",
    )


def _add_quote(commands: _Commands, common: argparse.ArgumentParser) -> None:
    quote = commands.add_parser("quote", parents=[common], help="price one generation")
    quote.add_argument("model", help="model id (see: venice-audio models)")
    quote.add_argument(
        "--duration", type=_number(int, positive=True), help="length in seconds to price"
    )
    quote.add_argument(
        "--characters",
        type=_number(int, positive=True),
        help="characters of text to price (voice models)",
    )


def _add_generate(
    commands: _Commands, common: argparse.ArgumentParser, shared: argparse.ArgumentParser
) -> None:
    generate = commands.add_parser("generate", parents=[common, shared], help="make one audio file")
    generate.add_argument("model", help="model id (see: venice-audio models)")
    generate.add_argument("prompt", help="what to make (voice models: the text to speak)")
    generate.add_argument(
        "--out",
        default=".",
        help=(
            "an existing folder to write into, or a file path; the file's extension is set "
            "to the audio actually received (default: .)"
        ),
    )
    _request_arguments(generate)


def _add_fetch(commands: _Commands, common: argparse.ArgumentParser) -> None:
    fetch = commands.add_parser(
        "fetch", parents=[common], help="download the audio of a job queued earlier"
    )
    fetch.add_argument("queue_id", help="the job's queue id (from generate, or the manifest)")
    fetch.add_argument("--model", required=True, help="the model the job was queued with")
    fetch.add_argument(
        "--out",
        default=".",
        help="an existing folder to write into, or a file path (default: .)",
    )
    fetch.add_argument(
        "--folder",
        metavar="DIR",
        help="with --fake: the --fake batch folder whose jobs the built-in fake server "
        "knows (default: --out, when it is one)",
    )


def _add_batch(
    commands: _Commands, common: argparse.ArgumentParser, shared: argparse.ArgumentParser
) -> None:
    batch = commands.add_parser(
        "batch", parents=[common, shared], help="generate every line of a file"
    )
    batch.add_argument("file", help="JSON Lines or CSV file of requests")
    batch.add_argument("--out", required=True, help="folder for the audio and manifest.jsonl")
    batch.add_argument(
        "--dry-run",
        action="store_true",
        help="check and price every line, then stop: nothing is queued or paid, the folder "
        "is not created (prices from the catalogue; quote only where it has none)",
    )
    _batch_arguments(batch)


def _add_resume(
    commands: _Commands, common: argparse.ArgumentParser, shared: argparse.ArgumentParser
) -> None:
    resume = commands.add_parser(
        "resume", parents=[common, shared], help="finish an interrupted batch"
    )
    resume.add_argument("dir", help="the batch's --out folder")
    _batch_arguments(resume)


def _request_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--duration",
        type=_number(int, positive=True),
        help="length in seconds (models with a duration)",
    )
    command.add_argument("--lyrics", help="song lyrics (models that take lyrics)")
    command.add_argument(
        "--instrumental",
        action="store_true",
        default=None,
        help="no vocals (models that support it)",
    )
    command.add_argument(
        "--loop", action="store_true", default=None, help="make it loop seamlessly (if supported)"
    )
    command.add_argument("--voice", help="voice name (voice models; see: venice-audio models)")
    command.add_argument(
        "--speed",
        type=_number(float, positive=True),
        help="speaking speed, 1.0 is normal (voice models)",
    )


def _batch_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--max-spend",
        type=_number(float, positive=False),
        metavar="USD",
        help="refuse to spend more than this in the folder, over all runs (USD)",
    )
    command.add_argument(
        "--requeue-unknown",
        action="store_true",
        help="send again jobs whose queue answer was lost (may pay twice)",
    )
