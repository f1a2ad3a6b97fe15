"""The local (POSIX, Windows) run directory: one writer at a time, atomic commits by rename.

Commit protocol: write ``.<name>.<pid>.<random>.partial`` in the run directory, fsync it, rename it over
``<name>`` (``os.replace``), fsync the directory where the platform allows it. A crash at any instant leaves either
the old set of checkpoints or the old set plus the new one; a leftover ``.partial`` file is removed at the next
start. Retention deletes only after the commit. Serves local paths and ``file://`` URLs.

Every operation that writes or deletes (commit, delete, removal of partials, clearing for ``--fresh``) requires
the writer lock (reprotrain.checkpoint.lock.WriterLock), taken by ``acquire()`` before anything is decided.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable

from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.lock import LOCK_NAME, WriterLock, durable_sync, fsync_directory
from reprotrain.checkpoint.storage.base import (CHECKPOINT_SUFFIX, PARTIAL_SUFFIX, Entry, io_error_message,
                                                read_entry, sort_entries)
from reprotrain.errors import ReprotrainError, os_error_message

_SIDECAR = "reprotrain-manifest.json"  # reprotrain.checkpoint.sealed.SIDECAR
# Listed too: Lightning's `.ckpt` files (the Lightning integration writes reprotrain checkpoints under those names)
# and framework checkpoint directories (Hugging Face `checkpoint-N`, Accelerate `checkpoint_N`, or any directory
# sealed by a reprotrain-manifest.json): see reprotrain.checkpoint.sealed.
LISTED_SUFFIXES = (CHECKPOINT_SUFFIX, ".ckpt")
SHARDED_SUFFIX = ".dcp"  # a sharded checkpoint directory, one unit (reprotrain.checkpoint.sharded)
_FRAMEWORK_DIR = re.compile(r"checkpoint[-_]\d+")

class WriterLockNotHeld(ReprotrainError):
    """A destructive operation was attempted without the writer lock (a programming error, never a user's)."""

    exit_code = 2


class _FdWriter:
    """A write-only file object over a descriptor whose writes are plain os.write calls (what the crash-state
    recorder in benchmarks/crashstates.py observes)."""

    def __init__(self, fd: int):
        self._fd = fd

    def write(self, data) -> int:
        return os.write(self._fd, data)

    def fileno(self) -> int:
        return self._fd


class RunDirectory:
    """A local run directory owned by one writer (WriterLock: released by the kernel if the process dies)."""

    def __init__(self, path: str | os.PathLike | Location, *, log: Callable[[str], None] | None = None):
        self.path = Location.of(path)  # how the run is named (a path, or the file:// URL it was given as)
        if not self.path.is_local:
            raise ValueError(f"{self.path} is a URL: use reprotrain.checkpoint.storage.open_run_directory")
        self.root: Path = self.path.path
        self._log = log or (lambda msg: None)
        self._lock = WriterLock(self.root / LOCK_NAME)
        self._entries: dict[tuple, Entry] = {}  # shallow listing cache, see list_checkpoints

    # -- ownership -----------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> None:
        """Take the writer lock (RunDirectoryBusy, exit 2, naming the holder), then remove leftover partials.

        Idempotent: a RunDirectory that already holds its lock keeps it.
        """
        if self._lock.held:
            return
        try:
            missing = []
            probe = self.root.absolute()
            while not probe.exists() and probe != probe.parent:
                missing.append(probe)
                probe = probe.parent
            self.root.mkdir(parents=True, exist_ok=True)
            # A new directory's entry lives in its parent: without this fsync a power cut could lose the whole
            # run directory, saves included (found by benchmarks/crashstates.py under the POSIX model).
            for created in reversed(missing):
                fsync_directory(created.parent)
        except OSError as exc:
            raise ReprotrainError(f"{os_error_message(exc)} while creating the run directory", path=self.path) from None
        if not self.root.is_dir():
            raise ReprotrainError("not a directory", path=self.path)
        self._lock.acquire()
        self.remove_partials()

    def release(self) -> None:
        self._lock.release()

    def _require_lock(self, what: str) -> None:
        if not self._lock.held:
            raise WriterLockNotHeld(f"refusing to {what} without holding the writer lock", path=self.path)

    def clear(self) -> list[str]:
        """Delete everything in the run directory but the lock itself (``train --fresh --overwrite``), under the lock."""
        self._require_lock("clear the run directory")
        removed = []
        for p in sorted(self.root.iterdir()):
            if p.name == LOCK_NAME:
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ReprotrainError(f"{os_error_message(exc)} while deleting {p.name}; the run directory is partly "
                                      "deleted", path=self.path) from None
            removed.append(p.name)
        return removed

    def remove_partials(self) -> list[str]:
        self._require_lock("remove unfinished checkpoint files")
        removed = []
        for p in self.root.glob(f".*{PARTIAL_SUFFIX}"):
            try:
                if p.is_dir() and not p.is_symlink():  # an unfinished sharded checkpoint directory
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p.name)
            except OSError:
                continue
        if removed:
            self._log(f"removed {len(removed)} unfinished checkpoint file(s) left by an earlier crash: {', '.join(sorted(removed))}")
        return removed

    # -- writing -------------------------------------------------------------------------
    def commit(self, name: str, write: Callable[[object], object]) -> Location:
        """Atomically create ``name`` with the bytes ``write(fileobj)`` produces; return its path."""
        self._require_lock(f"write {name}")
        final = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise ReprotrainError(io_error_message(exc, f"creating {tmp.name}"), path=self.path) from None
        try:
            try:
                written = write(_FdWriter(fd))
                durable_sync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            fsync_directory(self.root)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise ReprotrainError(io_error_message(exc, f"writing {name}"), path=self.path) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        self._remember(name, written)
        return self.path / name

    def _remember(self, name: str, written=None) -> None:
        """Seed the listing cache with the checkpoint just committed: the retention listing that follows every save
        then reads nothing. ``written`` (what ``write`` returned; see RunStorage.commit): with its
        ``checkpoint_info(location)``, the writer's own account of the file is the entry, when its size is the
        file's; otherwise the file is read back, its pickles not scanned again (this process wrote them)."""
        if not name.endswith(CHECKPOINT_SUFFIX):
            return
        try:
            st = (self.root / name).stat()
        except OSError:
            return
        location = self.path / name
        info = written.checkpoint_info(location) if hasattr(written, "checkpoint_info") else None
        if info is not None and info.size == st.st_size:
            entry = Entry(location, info, None, False)
        else:
            entry = read_entry(location, deep=False, own_write=True)
        self._entries[(name, st.st_ino, st.st_size, st.st_mtime_ns)] = entry

    def delete(self, name: str) -> None:
        self._require_lock(f"delete {name}")
        path = self.root / name
        if path.is_dir() and not path.is_symlink():
            # A sharded checkpoint goes as one unit: renamed out of the listing first (atomic), then removed; a crash
            # in between leaves a .partial directory that the next writer removes.
            doomed = self.root / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
            try:
                os.replace(path, doomed)
                fsync_directory(self.root)
            except FileNotFoundError:
                return
            shutil.rmtree(doomed, ignore_errors=True)
            return
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    # -- reading -------------------------------------------------------------------------
    def checkpoint_paths(self, *, frameworks: bool = False) -> list[Location]:
        return [self.path / p.name for p in list_checkpoint_paths(self.root, frameworks=frameworks)]

    def list_checkpoints(self, *, deep: bool = False, frameworks: bool = False) -> list[Entry]:
        """Every `.pth` file of the run directory, invalid first, then oldest to newest; ``deep`` re-hashes every file;
        ``frameworks`` also lists Lightning `.ckpt` files and sealed (or unsealed) framework checkpoint directories.

        Shallow reads are remembered by (name, inode, size, mtime): a writer lists its directory after every save
        (retention), and a committed file is never changed in place, only replaced by a rename (a new inode), so only
        new or replaced files are read again."""
        if deep or frameworks:
            return sort_entries([read_entry(p, deep=deep) for p in self.checkpoint_paths(frameworks=frameworks)])
        entries, seen = [], {}
        for path in self.checkpoint_paths():
            try:
                st = path.path.stat()
            except OSError:
                key = None
            else:
                key = (path.name, st.st_ino, st.st_size, st.st_mtime_ns)
            entry = self._entries.get(key) if key is not None else None
            if entry is None:
                entry = read_entry(path, deep=False)
            if key is not None:
                seen[key] = entry
            entries.append(entry)
        self._entries = seen
        return sort_entries(entries)

    def names(self) -> list[str]:
        """What the run directory holds besides the writer lock ([] when it does not exist); reads only."""
        try:
            return [n for n in os.listdir(self.root) if n != LOCK_NAME]
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise ReprotrainError("not a directory", path=self.path) from None
        except OSError as exc:
            raise ReprotrainError(f"cannot list the run directory: {os_error_message(exc)}", path=self.path) from None

    def local_path(self, name: str) -> Path:
        """Where a side file such as metrics.jsonl is written (object stores mirror it from a local folder)."""
        return self.root / name


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def list_checkpoint_paths(run_dir: str | os.PathLike, *, frameworks: bool = False) -> list[Path]:
    """The `.pth` files and sharded `.dcp` checkpoint directories of a run directory; with ``frameworks`` also
    Lightning `.ckpt` files and framework
    checkpoint directories (what `reprotrain ls` and the framework integrations list)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReprotrainError("run directory does not exist or is not a directory", path=path)
    if not frameworks:
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and (
            p.suffix == CHECKPOINT_SUFFIX
            or (p.suffix == SHARDED_SUFFIX and p.is_dir() and not p.is_symlink())))
    return sorted(p for p in path.iterdir() if not p.name.startswith(".") and (
        (p.suffix in LISTED_SUFFIXES and not p.is_dir()) or (p.is_dir() and not p.is_symlink() and (
            _FRAMEWORK_DIR.fullmatch(p.name) or p.suffix == SHARDED_SUFFIX or (p / _SIDECAR).is_file()))))
