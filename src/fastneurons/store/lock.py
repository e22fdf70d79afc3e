"""One writer per store: an exclusive ``fcntl.flock`` on ``<out>.lock``, holding the writer's pid and host.

Taken before anything of the store is written and held until the command ends; a second writer
gets one line naming the holder. The kernel drops the lock when its process dies (even by
``kill -9``), so a stale lock file never blocks anyone; the file is removed on release.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


def lock_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


class StoreLock:
    """``with StoreLock(out):`` holds the store's lock, or raises StoreError naming the process that has it."""

    def __init__(self, path):
        self.path = lock_path(path)
        self._fd = None

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        from fastneurons.store.format import StoreError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                store = self.path.name[:-len(".lock")]
                raise StoreError(f"{store} is being written by {holder} (lock {self.path}); wait for it to "
                                 "finish, or stop it first") from None
            if _same_file(fd, self.path):  # not a lock file that its holder removed meanwhile
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: a waiting writer then retries on a fresh file
        os.close(self._fd)
        self._fd = None


def writer_of(path):
    """The process writing store ``path`` now ('pid N on HOST'), or None when no writer holds its lock."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, named = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
