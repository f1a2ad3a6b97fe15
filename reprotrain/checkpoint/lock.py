"""The writer lock of a local run directory: one writer at a time, on every platform.

``WriterLock(path)`` is an exclusive, non-blocking lock on the file ``path`` (``<run_dir>/.reprotrain.lock``).
Every destructive operation on a run directory (commit, retention delete, removal of ``.partial`` files,
``--fresh --overwrite``) runs only while it is held; a second writer is refused with exit code 2 and a message
naming the holder (pid, host, since), which the holder writes into the lock file.

Mechanisms, chosen once per process (imported lazily: nothing here imports ``fcntl`` at module level):

* POSIX: ``fcntl.flock`` on the lock file; the kernel releases it when the holder dies, however it dies.
* Windows: ``msvcrt.locking`` on one byte far past the note (so the note stays readable); released at death too.
* neither available: the lock file itself is the lock, created with ``O_CREAT | O_EXCL``. A file left by a
  holder that died is taken over when it names a pid on this host that no longer runs; a holder on another
  host is never presumed dead (remove the file by hand when you know it is gone).

The note is informative only: the lock is the kernel lock (or, in the last mode, the file's existence).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path

from reprotrain.errors import ReprotrainError, os_error_message

LOCK_NAME = ".reprotrain.lock"
_NOTE_LIMIT = 4096
_MSVCRT_OFFSET = 0x7FFF0000  # the byte msvcrt locks: far past the note, so the note stays readable
_EMPTY_NOTE_GRACE_S = 10.0   # exclusive-file mode: an empty lock file younger than this is a holder starting up


class RunDirectoryBusy(ReprotrainError):
    """Another writer holds the run directory (exit code 2)."""

    exit_code = 2


def _hostname() -> str:
    import socket  # here, not at the top: ~6 ms of every command's start, needed only to write or judge a lock note

    return socket.gethostname()


def mechanism() -> str:
    """``flock``, ``msvcrt`` or ``exclusive-file``: what WriterLock uses in this process."""
    try:
        import fcntl  # noqa: F401

        if hasattr(fcntl, "flock"):
            return "flock"
    except ImportError:
        pass
    try:
        import msvcrt  # noqa: F401

        return "msvcrt"
    except ImportError:
        return "exclusive-file"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (or cannot be told): presumed alive
    return True


def describe_holder(note: dict | None) -> str:
    if not isinstance(note, dict) or not note:
        return "holder unknown"
    return f"pid {note.get('pid')} on {note.get('host')} since {note.get('since')}"


def _open_note(path):
    """The lock file for reading its note: a regular file only (a FIFO planted in the run directory must not hang
    the reader); at most _NOTE_LIMIT bytes are read from it by the callers."""
    from reprotrain import safeio

    return safeio.open_regular(path, limit=1 << 50, what="writer lock file")


def _parse_note(raw: bytes) -> dict | None:
    try:
        note = json.loads(raw[:_NOTE_LIMIT].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, _NOTE_LIMIT)


def _write_note(fd: int, note: dict) -> None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(note).encode())
    except OSError:
        pass  # the lock holds even if the note cannot be written (full disk)


class WriterLock:
    """An exclusive writer lock on ``path``; ``acquire()`` never blocks (RunDirectoryBusy when held elsewhere).

    Usable as a context manager. Re-acquiring a lock this object already holds is a no-op.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None
        self._mechanism: str | None = None
        self._token: str | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _note(self) -> dict:
        return {"pid": os.getpid(), "host": _hostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": self._token}

    def _busy(self, note: dict | None) -> RunDirectoryBusy:
        return RunDirectoryBusy(f"run directory is in use by another writer ({describe_holder(note)}); one writer "
                                "per run directory", path=self.path.parent)

    def acquire(self) -> "WriterLock":
        if self.held:
            return self
        self._mechanism = mechanism()
        self._token = os.urandom(8).hex()
        if self._mechanism == "exclusive-file":
            self._acquire_exclusive()
        else:
            self._acquire_kernel()
        return self

    def holder(self) -> str:
        """Who holds the lock now, as one phrase (``holder unknown`` when nobody wrote a note)."""
        try:
            with _open_note(self.path) as f:
                return describe_holder(_parse_note(f.read(_NOTE_LIMIT)))
        except (OSError, ReprotrainError):
            return "holder unknown"

    # -- kernel locks (flock, msvcrt) -----------------------------------------------------------
    def _acquire_kernel(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise ReprotrainError(f"{os_error_message(exc)} while opening the writer lock {self.path.name}",
                                  path=self.path.parent) from None
        try:
            if self._mechanism == "flock":
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                import msvcrt

                os.lseek(fd, _MSVCRT_OFFSET, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            try:
                note = _parse_note(_read_fd(fd))
            except OSError:
                note = None
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK) or \
                    isinstance(exc, BlockingIOError):
                raise self._busy(note) from None
            raise ReprotrainError(f"{os_error_message(exc)} while locking {self.path.name}", path=self.path.parent) \
                from None
        _write_note(fd, self._note())
        self._fd = fd

    # -- exclusive-file mode -------------------------------------------------------------------
    def _acquire_exclusive(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        for _ in range(3):
            try:
                fd = os.open(self.path, flags, 0o644)
            except FileExistsError:
                if self._take_over_stale():
                    continue
                raise self._busy(self._read_note()) from None
            except OSError as exc:
                raise ReprotrainError(f"{os_error_message(exc)} while creating the writer lock {self.path.name}",
                                      path=self.path.parent) from None
            _write_note(fd, self._note())
            os.fsync(fd)
            self._fd = fd
            return
        raise self._busy(self._read_note())

    def _read_note(self) -> dict | None:
        try:
            with _open_note(self.path) as f:
                return _parse_note(f.read(_NOTE_LIMIT))
        except (OSError, ReprotrainError):
            return None

    def _is_stale(self, note: dict | None, path: Path) -> bool:
        if note is None:
            try:
                return time.time() - path.stat().st_mtime > _EMPTY_NOTE_GRACE_S
            except OSError:
                return False
        pid = note.get("pid")
        return note.get("host") == _hostname() and isinstance(pid, int) and not isinstance(pid, bool) \
            and pid != os.getpid() and not _pid_alive(pid)

    def _take_over_stale(self) -> bool:
        """Move a dead holder's lock file aside (only one contender's rename succeeds); True if it was stale."""
        seen = self._read_note()
        if not self._is_stale(seen, self.path):
            return False
        aside = self.path.with_name(f"{self.path.name}.stale.{os.urandom(4).hex()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # another contender moved it: try to create ours
        except OSError:
            return False
        try:
            with _open_note(aside) as f:
                moved = _parse_note(f.read(_NOTE_LIMIT))
        except (OSError, ReprotrainError):
            moved = None
        if moved != seen and not self._is_stale(moved, aside):
            try:  # we moved a live holder's fresh lock (it replaced the stale one meanwhile): put it back
                os.link(aside, self.path)
            except OSError:
                pass
            _unlink(aside)
            return False
        _unlink(aside)
        return True

    # -- release ---------------------------------------------------------------------------------
    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        remove = False
        try:
            if self._mechanism == "flock":
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)
            elif self._mechanism == "msvcrt":
                import msvcrt

                os.lseek(fd, _MSVCRT_OFFSET, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            else:  # exclusive-file: the file is the lock; remove it only if it is still ours
                note = _parse_note(_read_fd(fd))
                remove = note is not None and note.get("token") == self._token
        except OSError:
            pass
        finally:
            os.close(fd)
        if remove:
            _unlink(self.path)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def durable_sync(fd: int) -> None:
    """Make a file's (or directory's) data and metadata durable: the one sync function of the commit protocol.

    Linux: fsync(2). macOS: fsync only hands the data to the drive, whose cache a power cut loses;
    fcntl(F_FULLFSYNC) asks the drive to flush it (file systems that refuse it get fsync).
    """
    if sys.platform == "darwin":
        try:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except (ImportError, OSError, AttributeError):
            pass
    os.fsync(fd)


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable, where the platform can (Windows cannot open a directory: no-op there)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        durable_sync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
