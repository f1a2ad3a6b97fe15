"""Checkpoints: format, atomic store, integrity, policies, resume selection, signal and error guard.

The public names are loaded lazily so that torch-free tools (`reprotrain verify --no-digest`, `ls`)
can import `reprotrain.checkpoint.reader` without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointManager": "reprotrain.checkpoint.manager",
    "Interrupted": "reprotrain.checkpoint.manager",
    "ResumeInfo": "reprotrain.checkpoint.manager",
    "SavePolicy": "reprotrain.checkpoint.policies",
    "RetentionPolicy": "reprotrain.checkpoint.policies",
    "CorruptCheckpoint": "reprotrain.checkpoint.manifest",
    "NotACheckpoint": "reprotrain.checkpoint.manifest",
    "read_info": "reprotrain.checkpoint.reader",
    "read_valid": "reprotrain.checkpoint.reader",
    "list_checkpoints": "reprotrain.checkpoint.store",
    "select_for_resume": "reprotrain.checkpoint.store",
    "load": "reprotrain.checkpoint.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reprotrain.checkpoint' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
