"""Run-directory storage: one interface (``base.RunStorage``), a local POSIX store and an fsspec object store.

``open_run_directory(location)`` is the one place that picks the store: a local path or ``file://`` URL gets
``local.RunDirectory`` (flock, rename, directory fsync); any other fsspec URL (s3://, gs://, az://, memory://, ...)
gets ``fsspec.ObjectRunDirectory`` (commit pointer, lease). Call order and guarantees: ``base``'s docstring and
docs/storage.md.
"""

from __future__ import annotations

import os
from typing import Callable

from reprotrain.checkpoint.location import Location, is_url
from reprotrain.checkpoint.storage.base import (AUTO_RESUME_KINDS, CHECKPOINT_SUFFIX, LOCK_NAME, METRICS_FILE,
                                                PARTIAL_SUFFIX, Entry, RunDirectoryBusy, RunStorage, io_error_message,
                                                read_entry, sort_entries)

__all__ = ["AUTO_RESUME_KINDS", "CHECKPOINT_SUFFIX", "LOCK_NAME", "METRICS_FILE", "PARTIAL_SUFFIX", "Entry",
           "Location", "RunDirectoryBusy", "RunStorage", "io_error_message", "is_url", "open_run_directory",
           "read_entry", "sort_entries"]


def open_run_directory(location: "str | os.PathLike | Location | RunStorage", *,
                       log: Callable[[str], None] | None = None, **options) -> RunStorage:
    """The store for ``location``; an already opened store is returned as it is. No I/O happens here.

    ``options`` go to the object store (``staging_dir``, ``storage_options``, ``part_size``, ...).
    """
    if not isinstance(location, (str, os.PathLike, Location)) and isinstance(location, RunStorage):
        return location  # (a Location is never probed against the protocol: its `path` raises for a URL)
    location = Location.of(location)
    if location.is_local:
        from reprotrain.checkpoint.storage.local import RunDirectory

        return RunDirectory(location, log=log)
    from reprotrain.checkpoint.storage.fsspec import ObjectRunDirectory

    return ObjectRunDirectory(location, log=log, **options)
