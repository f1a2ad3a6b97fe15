"""`reprotrain inspect`: manifest, lineage, integrity, a tensor summary and state digests of one checkpoint."""

from __future__ import annotations

import os

from reprotrain.audit.digest import _leaves, state_digest, training_state_digest
from reprotrain.audit.opening import open_checkpoint
from reprotrain.checkpoint import reader
from reprotrain.checkpoint.manifest import CheckpointInfo, CorruptCheckpoint


def inspect_path(path: str | os.PathLike, *, largest: int = 5) -> dict:
    """Manifest, lineage, integrity, a tensor summary and the model-state digest of a checkpoint."""
    from reprotrain.checkpoint import state as state_module

    # One open file for manifest, integrity and tensors: a writer replacing the path meanwhile cannot mix two files.
    with open_checkpoint(path) as opened:
        info = opened.info
        integrity = reader.check_integrity(info, opened.file)
        if not integrity.ok:
            raise CorruptCheckpoint("; ".join(integrity.problems), path=path)
        if opened.file is None:  # a sealed framework directory: its files are the framework's own formats
            return _inspect_sealed(path, info, integrity)
        state = state_module.load(opened, map_location="cpu", mmap=True)["state"]
    tensors = [(path_, leaf) for path_, leaf in _leaves(state) if _is_tensor(leaf)]
    dtypes: dict[str, int] = {}
    for _, tensor in tensors:
        dtypes[str(tensor.dtype).removeprefix("torch.")] = dtypes.get(str(tensor.dtype).removeprefix("torch."), 0) + 1
    biggest = sorted(tensors, key=lambda item: item[1].nbytes, reverse=True)[:largest]
    manifest = info.manifest
    return {
        "path": str(path),
        "size": info.size,
        "integrity": {"ok": integrity.ok, "bytes_checked": integrity.bytes_checked},
        "signature": info.signature,  # {"key_id", "time", "format"} as the file states them (verify --trusted-key checks it)
        "manifest": manifest,
        "lineage": manifest["lineage"],
        "tensors": {
            "count": len(tensors),
            "bytes": sum(t.nbytes for _, t in tensors),
            "dtypes": dict(sorted(dtypes.items())),
            "largest": [{"name": "/".join(p), "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                         "bytes": t.nbytes} for p, t in biggest],
        },
        "state_digest": state_digest(state.get("model")) if "model" in state else None,
        "training_state_digest": training_state_digest(state),
    }


def _inspect_sealed(path, info: CheckpointInfo, integrity) -> dict:
    from reprotrain.checkpoint import sealed

    files = sealed.read_sidecar(info.path)["files"]
    return {
        "path": os.fspath(path),
        "size": info.size,
        "integrity": {"ok": integrity.ok, "bytes_checked": integrity.bytes_checked},
        "manifest": info.manifest,
        "lineage": info.manifest["lineage"],
        "files": files,
        "tensors": None,
        "state_digest": None,
        "training_state_digest": None,
    }


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
