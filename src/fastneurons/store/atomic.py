"""Atomic HDF5 writes that fail with one clear error, never a crash (docs/store-schema.md, "Crash safety").

HDF5 writes much of a file late (chunk and metadata caches flush when objects are released), so a
write that fails on a full disk surfaces in h5py's deallocators, where it cannot be raised, and
leaves the library in a state where the next flush or close segfaults. HDF5 therefore writes
through ``GuardedFile``: a Python file object that remembers the first failed write and reports
success to HDF5, so the library finishes and closes normally; the error is raised once it has.
For the same reason a Ctrl-C or SIGTERM during a write must not raise inside HDF5's callbacks (nor in
a finalizer, where it would be swallowed): it is raised only in ordinary Python code, and sent again
a moment later when it lands elsewhere.
"""
from __future__ import annotations

import errno
import io
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import h5py


class WriteFailed(OSError):
    """A write of a store file failed (disk full, file-size limit, I/O error); the reason is ``args[0]``."""


class GuardedFile(io.RawIOBase):
    """A file that HDF5 writes through; the first failed write is kept in ``error`` and later writes are skipped."""

    def __init__(self, path: Path):
        super().__init__()
        self._raw = open(path, "w+b", buffering=0)
        self.error = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._raw.readinto(buffer)

    def write(self, data) -> int:
        if self.error is None:
            try:
                return self._raw.write(data)
            except OSError as err:
                self.error = err
        return len(memoryview(data))

    def seek(self, offset, whence=os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def truncate(self, size=None) -> int:
        if self.error is None:
            try:
                return self._raw.truncate(size)
            except OSError as err:
                self.error = err
        return self._raw.tell() if size is None else size

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        """fsync the bytes written (raises the first failed write, if any)."""
        if self.error is None:
            try:
                os.fsync(self._raw.fileno())
            except OSError as err:
                self.error = err
        if self.error is not None:
            raise WriteFailed(self.error)

    def close(self) -> None:
        self._raw.close()
        super().close()


def atomic_h5(path: Path, write) -> None:
    """Write an HDF5 file through ``write(h5file)`` to a temporary name, fsync it, rename it over ``path``.

    Any failure deletes the temporary file and leaves ``path`` as it was; a failed write raises
    ``StoreError("cannot write PATH: <reason> ...")``, the one documented line."""
    from fastneurons.store.format import StoreError

    tmp = path.with_name(path.name + ".tmp")
    guarded, stage = None, "open"
    try:  # whatever stops it (a failure, Ctrl-C even during fsync), the temporary file goes
        guarded = GuardedFile(tmp)
        stage = "write"
        try:
            with _signals_deferred(guarded), h5py.File(guarded, "w") as f:
                write(f)
        except Exception:
            if guarded.error is None:
                raise  # not a failed write: the caller's own error (e.g. an unreadable source)
        stage = "commit"
        guarded.sync()  # raises the first failed write, also one that made `write` fail above
        guarded.close()
        os.replace(tmp, path)  # fails for an output path that is a directory
    except OSError as err:
        _discard(guarded, tmp)
        if stage == "write":
            raise
        reason = err.args[0] if isinstance(err, WriteFailed) else err
        raise StoreError(f"cannot write {path}: {_write_failure(reason, path)}") from err
    except BaseException:
        _discard(guarded, tmp)
        raise
    _fsync_dir(path.parent)
    raise_pending()  # a Ctrl-C or SIGTERM that came during the write stops the program now, the write landed


_CALLED_BY_HDF5 = {getattr(GuardedFile, name).__code__ for name in ("readinto", "write", "seek", "tell", "truncate",
                                                                    "flush", "readable", "writable", "seekable")}


def unsafe_to_raise(frame) -> bool:
    """Whether an exception raised in ``frame`` would break HDF5 (its I/O callbacks) or be swallowed
    (a finalizer or weakref callback prints "Exception ignored" and the program goes on)."""
    for _ in range(8):
        if frame is None:
            return False
        code = frame.f_code
        if code in _CALLED_BY_HDF5 or code.co_name == "__del__" or code.co_filename.endswith(
                ("weakref.py", "_weakrefset.py")):
            return True
        frame = frame.f_back
    return False


_PENDING: list = []  # signals that landed where raising was unsafe, not yet raised


def deliver_later(signum) -> None:
    """Raise ``signum`` at the next safe point: when the HDF5 write in progress has landed
    (``raise_pending``), or, outside a write, when it is sent to this process again shortly."""
    if signum not in _PENDING:
        _PENDING.append(signum)
    timer = threading.Timer(0.05, _send_again, (signum,))
    timer.daemon = True
    timer.start()


def _send_again(signum) -> None:
    try:
        _PENDING.remove(signum)  # not yet raised by raise_pending
    except ValueError:
        return
    os.kill(os.getpid(), signum)


def raise_pending() -> None:
    """Deliver the signals deferred during a write, now that raising them is safe."""
    while _PENDING:
        try:
            signum = _PENDING.pop(0)
        except IndexError:
            return
        signal.raise_signal(signum)


class _signals_deferred:
    """While HDF5 writes, a SIGINT or SIGTERM is raised only where that is safe (see ``unsafe_to_raise``);
    one that lands elsewhere is sent again a moment later."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, guarded: GuardedFile):
        self.guarded, self.previous = guarded, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum, frame) -> None:
        if unsafe_to_raise(frame):
            deliver_later(signum)
            return
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, frame)  # e.g. Python's KeyboardInterrupt, or the CLI's handler
            return
        self.__exit__()
        signal.raise_signal(signum)  # the default action (SIGTERM ends the process)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def _discard(guarded, tmp: Path) -> None:
    if guarded is not None and not guarded.closed:
        guarded.close()
    tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failure(err, path: Path) -> str:
    """Why a write failed, in words (the OS reason), and what to do; for a full disk, the free space."""
    text = getattr(err, "strerror", None) or str(err)
    match = re.search(r"errno = (\d+)", str(err))
    code = getattr(err, "errno", None) or (int(match.group(1)) if match else None)
    if code:
        text = os.strerror(code) + ("" if os.strerror(code) in text else f" ({text})")
    if code not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return text + "; nothing committed was lost"
    try:
        text += f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on that disk"
    except OSError:
        pass
    return text + ("; nothing committed was lost: free space and run the command again "
                   "(a recording: with --resume)")
