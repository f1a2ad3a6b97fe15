"""Opening a file for the audit commands: a reprotrain checkpoint, or an error carrying the classification of a
foreign file (exit 2 or 3)."""

from __future__ import annotations

import contextlib
import os

from reprotrain.audit import classify as foreign
from reprotrain.checkpoint import reader
from reprotrain.checkpoint.manifest import CheckpointInfo, NotACheckpoint
from reprotrain.errors import ReprotrainError


def load_checkpoint(path: str | os.PathLike, *, check_integrity: bool = True) -> CheckpointInfo:
    """read_info (by default after a full integrity check: a damaged file is exit 2, never compared as if it
    were sound), turning a foreign file into an error with its classification (exit 2 or 3)."""
    try:
        return reader.read_info(path, check_integrity=check_integrity)
    except NotACheckpoint as exc:
        if os.path.isdir(path):
            raise ReprotrainError(exc.message, path=path, exit_code=3) from None
        verdict = foreign.classify(path)
        raise ReprotrainError(verdict.reason, path=path, exit_code=verdict.exit_code) from None


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike):
    """reader.open_checkpoint, turning a foreign file into an error with its classification (exit 2 or 3)."""
    try:
        opened = reader.open_checkpoint(path)
        value = opened.__enter__()
    except NotACheckpoint as exc:
        if os.path.isdir(path):
            raise ReprotrainError(exc.message, path=path, exit_code=3) from None
        verdict = foreign.classify(path)
        raise ReprotrainError(verdict.reason, path=path, exit_code=verdict.exit_code) from None
    try:
        yield value
    finally:
        opened.__exit__(None, None, None)
