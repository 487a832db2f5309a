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

On Windows (untested here) ``msvcrt.locking`` locks one byte past the pid instead, which
the system also drops when the process ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from pathlib import Path

from .._core.errors import JournalError

__all__ = ["OwnerLock", "lock_path_for"]

_BUSY = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK}

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> None:
        os.lseek(fd, 64, os.SEEK_SET)  # past the pid, so the pid stays readable
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


_held: set[tuple[int, int]] = set()  # (device, inode) of lock files this process holds
_held_guard = threading.Lock()


def lock_path_for(journal: Path) -> Path:
    """The lock file of ``journal``."""
    return journal.with_name(journal.name + ".lock")


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _write_pid(fd: int, pid: int | None) -> None:
    os.ftruncate(fd, 0)
    if pid is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{pid}\n".encode("ascii"))


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
                    _try_lock(fd)
                except OSError as error:
                    if error.errno not in _BUSY:
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
        # Without the pid the lock still holds; a refused opener then says "another process".
        with contextlib.suppress(OSError):
            _write_pid(fd, os.getpid())
        return cls(path, fd, identity)

    def release(self) -> None:
        """Clear the pid and drop the lock (idempotent). Blocking I/O."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            _write_pid(fd, None)
        with _held_guard:
            _held.discard(self._identity)
            os.close(fd)  # closing the only descriptor releases the lock
