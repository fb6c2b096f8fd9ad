"""One exclusive lock for threads and processes on the same files: `FileLock(path).hold(timeout)`.

The index rebuild, KB edits, the bundled model's one-time export and the first schema migration of
a SQLite file all need "one at a time", across the threads of a process (a `threading.Lock` per
path) *and* across worker processes and CLI commands (`fcntl.flock` on the lock file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from faq.errors import ConflictError

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()
_POLL_SECONDS = 0.05


class LockTimeoutError(ConflictError):
    """Someone else holds the lock and did not let go in time."""

    code = "busy"


class FileLock:
    """An exclusive lock shared by the threads of this process and by other processes (flock on `path`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        key = str(self.path.resolve())
        with _process_locks_guard:
            self._thread_lock = _process_locks.setdefault(key, threading.Lock())

    @property
    def held_elsewhere(self) -> bool:
        """True if a thread here or another process holds the lock right now (a snapshot)."""
        if self._thread_lock.locked():
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            if not _try_flock(handle):
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False

    @contextlib.contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock for the block: wait at most `timeout` seconds (0 = do not wait, None = for ever),
        else LockTimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout is None:
            acquired = self._thread_lock.acquire()
        else:
            acquired = self._thread_lock.acquire(timeout=timeout) if timeout > 0 else self._thread_lock.acquire(False)
        if not acquired:
            raise LockTimeoutError(str(self.path))
        handle: IO[str] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a")
            if deadline is None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            else:
                while not _try_flock(handle):
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(str(self.path))
                    time.sleep(_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            if handle is not None:
                handle.close()
            self._thread_lock.release()


def _try_flock(handle: IO[str]) -> bool:
    """Take the flock without waiting: False if another process (or open file) holds it."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
