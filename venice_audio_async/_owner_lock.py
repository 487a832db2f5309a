"""One owner per journal: an advisory lock file beside it, holding the owner's pid.

The lock is ``flock`` (exclusive, non-blocking) on ``<journal>.lock``. The kernel drops it
when the owner's last descriptor closes, so a process killed with ``kill -9`` never leaves a
journal locked. ``flock`` locks belong to an open file description, so a second open in the
same process is refused too (POSIX ``lockf`` locks would not be: they belong to the process,
and closing any descriptor of the file drops them). A process-wide table catches the
same-process case as well where ``flock`` is emulated with per-process locks (some network
filesystems), and gives it a clearer message.

The lock file is left in place when released (only its pid is cleared): deleting it could
let two processes lock two different files of the same name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from pathlib import Path

from ._errors import JournalError

__all__ = ["OwnerLock"]

_held: set[tuple[int, int]] = set()  # (device, inode) of lock files this process holds
_held_guard = threading.Lock()


def lock_path_for(journal: Path) -> Path:
    """The lock file of ``journal``."""
    return journal.with_name(journal.name + ".lock")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class OwnerLock:
    """The held lock of one journal. Acquire with :meth:`acquire`; :meth:`release` once."""

    def __init__(self, path: Path, fd: int, identity: tuple[int, int]) -> None:
        self.path = path
        self._fd: int | None = fd
        self._identity = identity

    @classmethod
    def acquire(cls, journal: Path) -> OwnerLock:
        """Take the lock of ``journal`` or raise :class:`JournalError` naming its holder.

        Blocking I/O: call it from a worker thread.
        """
        path = lock_path_for(journal)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise JournalError(
                f"cannot create the journal's lock file {path}: {error.strerror}. The folder "
                "must be writable (check its permissions and free space); nothing was sent",
                path=str(journal),
            ) from error
        try:
            stat = os.fstat(fd)
            identity = (stat.st_dev, stat.st_ino)
            with _held_guard:
                if identity in _held:
                    raise JournalError(
                        f"the journal {journal} is already open in this process "
                        f"(pid {os.getpid()}): use the session that holds it, or close it "
                        "first; nothing was sent",
                        path=str(journal),
                        holder_pid=os.getpid(),
                    )
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise JournalError(
                            f"cannot lock the journal {journal}: {error.strerror}; "
                            "nothing was sent",
                            path=str(journal),
                        ) from error
                    holder = _read_pid(fd)
                    who = f"process {holder}" if holder is not None else "another process"
                    raise JournalError(
                        f"the journal {journal} is in use by {who}: another batch, resume or "
                        "session is working on it. Wait for it to finish (or stop it), then "
                        "try again; nothing was sent",
                        path=str(journal),
                        holder_pid=holder,
                    ) from None
                _held.add(identity)
        except BaseException:
            os.close(fd)
            raise
        lock = cls(path, fd, identity)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # the lock holds without the pid; a refused opener then says "another process"
        return lock

    def release(self) -> None:
        """Clear the pid and drop the lock (idempotent). Blocking I/O."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with _held_guard:
            _held.discard(self._identity)
            os.close(fd)  # closing the only descriptor releases the flock
