"""Listing a run directory and choosing what resume loads.

The stores themselves (local POSIX directory, fsspec object stores), their interface and its call order are in
`reprotrain.checkpoint.storage`; this module keeps the names older code imports from here.
"""

from __future__ import annotations

import os
from typing import Callable

from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.lock import durable_sync, fsync_directory  # noqa: F401
from reprotrain.checkpoint.storage import (AUTO_RESUME_KINDS, CHECKPOINT_SUFFIX, LOCK_NAME,  # noqa: F401
                                           PARTIAL_SUFFIX, Entry, RunDirectoryBusy, RunStorage, open_run_directory,
                                           read_entry, sort_entries)
from reprotrain.checkpoint.storage.local import (LISTED_SUFFIXES, SHARDED_SUFFIX, RunDirectory, WriterLockNotHeld,  # noqa: F401
                                                 list_checkpoint_paths)


def list_checkpoints(run_dir: "str | os.PathLike | Location | RunStorage", *, deep: bool = False,
                     frameworks: bool = False) -> list[Entry]:
    """Every checkpoint of the run directory (any store), invalid first, then oldest to newest; ``deep`` re-hashes
    every file; ``frameworks`` also lists Lightning `.ckpt` files and framework checkpoint directories (local)."""
    return open_run_directory(run_dir).list_checkpoints(deep=deep, frameworks=frameworks)


def resume_candidates(entries: list[Entry], *, report: Callable[[str], None] | None = None,
                      trusted=None) -> list[Entry]:
    """Resumable checkpoints by their manifests, newest first; unreadable files are reported.

    ``trusted`` (a `reprotrain.checkpoint.signing.TrustedKeys`): only checkpoints whose signature line names one of
    these keys in the current format (`TrustedKeys.screen`); the others are reported and skipped. The signature
    itself binds the tensors' SHA-256: the loader checks it in the pass that reads them (state.load(trusted=...)).
    """
    report = report or (lambda msg: None)
    for entry in entries:
        if entry.info is None and entry.problem:
            report(f"skipping unreadable file {entry.path.name}: {entry.problem}")
    picked = sorted((e for e in entries if e.resumable), key=Entry.sort_key, reverse=True)
    if trusted is None:
        return picked
    kept = []
    for entry in picked:
        verdict = trusted.screen(entry.info.directory)
        if verdict is None:
            kept.append(entry)
        else:
            report(f"skipping checkpoint {entry.path.name}: {verdict.message} (resume requires a trusted signature)")
    return kept


def select_for_resume(entries: list[Entry], *, report: Callable[[str], None] | None = None,
                      deep: bool = True, trusted=None) -> Entry | None:
    """The newest resumable checkpoint whose every byte checks out; newer damaged ones are reported and skipped.

    ``deep=False`` trusts the manifests (retention uses it right after its own commit). ``trusted``: see
    resume_candidates.
    """
    report = report or (lambda msg: None)
    for entry in resume_candidates(entries, report=report, trusted=trusted):
        if deep and not entry.integrity_checked:
            entry = read_entry(entry.path, deep=True)
        if entry.valid:
            return entry
        report(f"skipping damaged checkpoint {entry.path.name}: {entry.problem}")
    return None
