"""A throwaway ``redis-server`` on a free loopback port, for tests and benchmarks.

Persistence is off (``--save '' --appendonly no``): nothing is written to disk. The server
can be stopped and started again on the same port, to test a Redis that goes away.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["INSTALL_HINT", "RedisServer", "missing_redis"]

INSTALL_HINT = (
    "the Redis tests need a redis-server binary and the redis package: "
    "apt-get install redis-server (macOS: brew install redis) and "
    "pip install 'venice-audio-async[redis]'"
)


def missing_redis() -> str | None:
    """Why the Redis tests cannot run here, or ``None`` when they can."""
    if shutil.which("redis-server") is None:
        return f"no redis-server on PATH; {INSTALL_HINT}"
    try:
        import redis  # noqa: F401
    except ImportError:
        return f"the redis package is not installed; {INSTALL_HINT}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` in a child process on 127.0.0.1 (start, stop, start again)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._dir = tempfile.mkdtemp(prefix="venice-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (on the same port as before) and wait until it answers."""
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--logfile", "",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        """Kill the server (as a crash would: no shutdown, nothing saved)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def require_redis_env() -> bool:
    """Whether a missing Redis must fail the run (``.ci/run`` sets VENICE_REQUIRE_REDIS=1)."""
    return os.environ.get("VENICE_REQUIRE_REDIS") == "1"
