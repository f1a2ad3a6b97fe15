"""The run-directory storage interface: what every store (local POSIX, fsspec object stores) provides.

Modelled on ``torch.distributed.checkpoint``'s ``StorageWriter`` / ``StorageReader``: a small set of calls with a
stated order, so that the checkpoint manager, the audit commands and the training loop never ask which store they
talk to (no ``hasattr`` checks, no ``isinstance(run_dir, str)``).

Call order
----------

Writer (one per run directory: ``train`` and ``CheckpointManager`` on rank 0)::

    store = open_run_directory(location)        # no I/O yet
    store.acquire()                             # take the writer lock / lease FIRST (RunDirectoryBusy, exit 2),
                                                #   then remove what a crashed writer left half-written
    [ store.names(); store.clear() ]            # `train --fresh --overwrite` only: decided and done under the lock
    ( store.commit(name, write)                 # atomically add one checkpoint: all of it or nothing
    | store.delete(name)                        # retention, only after a newer commit
    | store.local_path(name)                    # a side file (metrics.jsonl) the store keeps with the run
    | store.list_checkpoints(deep=...) )*
    store.release()                             # flush side files, drop the lock / lease; always called

Reader (any number, no lock; ``reprotrain ls``, resume selection, ``report``)::

    store = open_run_directory(location)
    store.names()                               # what is there (besides the lock / lease)
    store.list_checkpoints(deep=...)            # committed checkpoints only, invalid ones first, then oldest->newest

``commit``, ``delete``, ``remove_partials`` and ``clear`` refuse to run without the lock (a programming error,
never a user's: ``WriterLockNotHeld`` / ``ObjectStoreError``).

Guarantees every implementation keeps: ``commit`` is atomic for readers (a reader lists the new checkpoint
complete or not at all); a failed or interrupted ``commit`` leaves every earlier checkpoint intact and readable;
``delete`` never removes the only copy of what ``commit`` has not yet made durable; ``list_checkpoints`` works
without ``acquire``. Every failure is a ``ReprotrainError`` naming the location (exit code 2), never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from reprotrain.checkpoint import reader
from reprotrain.checkpoint.manifest import CheckpointInfo
from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.lock import LOCK_NAME, RunDirectoryBusy  # noqa: F401  (part of the interface)
from reprotrain.errors import ReprotrainError, os_error_message

PARTIAL_SUFFIX = ".partial"
CHECKPOINT_SUFFIX = ".pth"
AUTO_RESUME_KINDS = ("latest", "periodic", "best", "interrupted")
METRICS_FILE = "metrics.jsonl"  # the run's metrics log (training writes it, `report` reads it)


def io_error_message(exc: OSError, what: str, *, intact: bool = True) -> str:
    """`disk full while writing x.pth; previous checkpoints are intact`."""
    return f"{os_error_message(exc)} while {what}" + ("; previous checkpoints are intact" if intact else "")


@dataclass
class Entry:
    """One checkpoint file in a run directory, valid or not."""

    path: Location
    info: CheckpointInfo | None
    problem: str | None  # why it is not valid (None when valid)
    integrity_checked: bool

    @property
    def valid(self) -> bool:
        return self.info is not None and self.problem is None

    @property
    def size(self) -> int | None:
        """Bytes of the checkpoint (from its zip directory when readable, else asked of the store)."""
        if self.info is not None:
            return self.info.size
        if self.path.is_local and self.path.is_dir():
            return None  # an unreadable checkpoint directory
        return self.path.size()

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


def read_entry(path, *, deep: bool, own_write: bool = False) -> Entry:
    location = Location.of(path)
    try:
        info = reader.read_info(location, check_integrity=deep, own_write=own_write)
    except ReprotrainError as exc:
        return Entry(location, None, exc.message, deep)
    return Entry(location, info, None, deep)


def sort_entries(entries: list[Entry]) -> list[Entry]:
    """Invalid entries first, then valid ones oldest to newest."""
    valid = sorted((e for e in entries if e.valid), key=Entry.sort_key)
    return [e for e in entries if not e.valid] + valid


@runtime_checkable
class RunStorage(Protocol):
    """A run directory on some store. See the module docstring for the call order and the guarantees."""

    path: Location  # where the run directory is

    @property
    def held(self) -> bool:
        """True while this process holds the writer lock / lease."""

    def acquire(self) -> None:
        """Become the one writer (RunDirectoryBusy if another holds it); clean up after a crashed writer.
        Idempotent."""

    def release(self) -> None:
        """Flush side files and stop being the writer. Safe to call twice or without acquire."""

    def names(self) -> list[str]:
        """Everything the run directory holds besides the writer lock / lease ([] when it does not exist)."""

    def remove_partials(self) -> list[str]:
        """Delete what a crashed writer left half-written; return the names removed."""

    def commit(self, name: str, write: Callable[[object], object]) -> Location:
        """Atomically create checkpoint ``name`` from the bytes ``write(fileobj)`` writes; return where to read it.
        What ``write`` returns may offer ``checkpoint_info(location)`` (format.Written does): a store may then list
        the new checkpoint from it instead of reading the file back."""

    def delete(self, name: str) -> None:
        """Remove checkpoint ``name`` (missing is fine)."""

    def list_checkpoints(self, *, deep: bool = False, frameworks: bool = False) -> list[Entry]:
        """Committed checkpoints, invalid first, then oldest to newest; ``deep`` re-hashes every byte; ``frameworks``
        also lists Lightning `.ckpt` files and framework checkpoint directories where the store has them."""

    def checkpoint_paths(self) -> list[Location]:
        """The Locations of the committed checkpoints (no manifest read)."""

    def local_path(self, name: str) -> Path:
        """A local file for side file ``name`` (metrics.jsonl); the store keeps it with the run."""

    def clear(self) -> list[str]:
        """`train --fresh --overwrite`: delete everything but the lock / lease, under it; return the names removed."""
