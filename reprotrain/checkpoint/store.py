"""The run directory: one writer at a time, atomic commits, listing and resume selection.

Commit protocol (local file systems): write ``.<name>.<pid>.<random>.partial`` in the run directory,
fsync it, rename it over ``<name>``, fsync the directory. A crash at any instant leaves either the old
set of checkpoints or the old set plus the new one; a leftover ``.partial`` file is removed at the next
start. Retention deletes only after the commit.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reprotrain.checkpoint import reader
from reprotrain.errors import ReprotrainError

LOCK_NAME = ".reprotrain.lock"
PARTIAL_SUFFIX = ".partial"
CHECKPOINT_SUFFIX = ".pth"
AUTO_RESUME_KINDS = ("latest", "periodic", "best", "interrupted")


class RunDirectoryBusy(ReprotrainError):
    exit_code = 2


def _io_error_message(exc: OSError, what: str) -> str:
    reasons = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EFBIG: "file too large for this file system or limit",
        errno.EIO: "I/O error",
    }
    return f"{reasons.get(exc.errno, exc.strerror or str(exc))} while {what}; previous checkpoints are intact"


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunDirectory:
    """A local run directory owned by one writer (an exclusive flock, released by the kernel if the process dies)."""

    def __init__(self, path: str | os.PathLike, *, log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self._log = log or (lambda msg: None)
        self._lock_fd: int | None = None

    # -- ownership -----------------------------------------------------------------------
    def acquire(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ReprotrainError(_io_error_message(exc, "creating the run directory").replace(
                "; previous checkpoints are intact", ""), path=self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryBusy(f"run directory is in use by another writer ({holder}); "
                                   "one writer per run directory", path=self.path) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError:
            pass  # the lock holds even if the note cannot be written (read-only metadata, full disk)
        self._lock_fd = fd
        self.remove_partials()

    def release(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def remove_partials(self) -> list[str]:
        removed = []
        for p in self.path.glob(f".*{PARTIAL_SUFFIX}"):
            try:
                p.unlink()
                removed.append(p.name)
            except OSError:
                continue
        if removed:
            self._log(f"removed {len(removed)} unfinished checkpoint file(s) left by an earlier crash: {', '.join(sorted(removed))}")
        return removed

    # -- writing -------------------------------------------------------------------------
    def commit(self, name: str, write: Callable[[object], object]) -> Path:
        """Atomically create ``name`` with the bytes ``write(fileobj)`` produces; return its path."""
        final = self.path / name
        tmp = self.path / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise ReprotrainError(_io_error_message(exc, f"creating {tmp.name}"), path=self.path) from None
        try:
            with open(fd, "wb", buffering=0, closefd=True) as f:
                write(f)
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_directory(self.path)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise ReprotrainError(_io_error_message(exc, f"writing {name}"), path=self.path) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return final

    def delete(self, name: str) -> None:
        try:
            (self.path / name).unlink()
        except FileNotFoundError:
            pass

    # -- reading -------------------------------------------------------------------------
    def checkpoint_paths(self) -> list[Path]:
        return list_checkpoint_paths(self.path)

    def list_checkpoints(self, *, deep: bool = False) -> list["Entry"]:
        return list_checkpoints(self.path, deep=deep)

    def local_path(self, name: str) -> Path:
        """Where a side file such as metrics.jsonl is written (object stores mirror it from a local folder)."""
        return self.path / name


def open_run_directory(location, *, log: Callable[[str], None] | None = None):
    """A RunDirectory for a local path; an object-store run directory for an fsspec URL (s3://, gs://, oss://...).

    An already opened run directory (either kind) is returned as it is.
    """
    if hasattr(location, "acquire") and hasattr(location, "commit"):
        return location
    if reader.is_url(location):
        from reprotrain.integrations.objectstore import ObjectRunDirectory

        return ObjectRunDirectory(location, log=log)
    return RunDirectory(location, log=log)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    except (OSError, ValueError):
        return "holder unknown"


def list_checkpoint_paths(run_dir: str | os.PathLike) -> list[Path]:
    path = Path(run_dir)
    if not path.is_dir():
        raise ReprotrainError("run directory does not exist or is not a directory", path=path)
    return sorted(p for p in path.iterdir() if p.suffix == CHECKPOINT_SUFFIX and not p.name.startswith("."))


@dataclass
class Entry:
    """One checkpoint file in a run directory, valid or not."""

    path: Path
    info: reader.CheckpointInfo | None
    problem: str | None  # why it is not valid (None when valid)
    integrity_checked: bool

    @property
    def valid(self) -> bool:
        return self.info is not None and self.problem is None

    @property
    def resumable(self) -> bool:
        """Picked automatically by resume: valid, of an auto-resume kind or an emergency marked resumable."""
        if not self.valid:
            return False
        m = self.info.manifest
        return m["resumable"] and (m["kind"] in AUTO_RESUME_KINDS or m["kind"] == "emergency")

    def sort_key(self):
        m = self.info.manifest
        return (m["step"], m["created"], self.path.name)


def read_entry(path: Path, *, deep: bool) -> Entry:
    try:
        info = reader.read_info(path, check_integrity=deep)
    except ReprotrainError as exc:
        return Entry(path, None, exc.message, deep)
    return Entry(path, info, None, deep)


def list_checkpoints(run_dir: str | os.PathLike, *, deep: bool = False) -> list[Entry]:
    """Every `.pth` file of the run directory, newest last; ``deep`` re-hashes every file.

    For an object-store URL: every committed checkpoint object (see reprotrain.integrations.objectstore).
    """
    if reader.is_url(run_dir):
        return open_run_directory(run_dir).list_checkpoints(deep=deep)
    return sort_entries([read_entry(p, deep=deep) for p in list_checkpoint_paths(run_dir)])


def sort_entries(entries: list[Entry]) -> list[Entry]:
    """Invalid entries first, then valid ones oldest to newest."""
    valid = sorted((e for e in entries if e.valid), key=Entry.sort_key)
    return [e for e in entries if not e.valid] + valid


def resume_candidates(entries: list[Entry], *, report: Callable[[str], None] | None = None) -> list[Entry]:
    """Resumable checkpoints by their manifests, newest first; unreadable files are reported."""
    report = report or (lambda msg: None)
    for entry in entries:
        if entry.info is None and entry.problem:
            report(f"skipping unreadable file {entry.path.name}: {entry.problem}")
    return sorted((e for e in entries if e.resumable), key=Entry.sort_key, reverse=True)


def select_for_resume(entries: list[Entry], *, report: Callable[[str], None] | None = None,
                      deep: bool = True) -> Entry | None:
    """The newest resumable checkpoint whose every byte checks out; newer damaged ones are reported and skipped.

    ``deep=False`` trusts the manifests (retention uses it right after its own commit).
    """
    report = report or (lambda msg: None)
    for entry in resume_candidates(entries, report=report):
        if deep and not entry.integrity_checked:
            entry = read_entry(entry.path, deep=True)
        if entry.valid:
            return entry
        report(f"skipping damaged checkpoint {entry.path.name}: {entry.problem}")
    return None
