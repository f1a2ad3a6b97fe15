"""Bit-exact digests of training state (tensors by dtype, shape and bytes; other leaves by repr)."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any


def _leaves(tree: Any, path: tuple = ()):
    """(key path, leaf) for every leaf of nested dicts, lists and tuples."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, path + (str(key),))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _leaves(value, path + (str(index),))
    else:
        yield path, tree


def state_digest(tree: Any) -> str:
    """sha256 over sorted (key path, dtype, shape, contiguous bytes) of every tensor in TREE, plus the repr
    of every other leaf: equal exactly when the weights (and plain values) are bit-identical."""
    import torch

    digest = hashlib.sha256()
    for path, leaf in sorted(_leaves(tree), key=lambda item: json.dumps(item[0])):
        digest.update(_framed(json.dumps(path).encode()))
        if isinstance(leaf, torch.Tensor):
            flat = leaf.detach().cpu().contiguous().reshape(-1)
            digest.update(_framed(f"tensor {flat.dtype} {list(leaf.shape)}".encode()))
            raw = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
            digest.update(_framed(memoryview(raw.numpy())))
        else:
            digest.update(_framed(f"value {leaf!r}".encode()))
    return "sha256:" + digest.hexdigest()


def _framed(data) -> bytes:
    # A length prefix keeps ("ab", "c") and ("a", "bc") apart.
    view = memoryview(data).cast("B")
    return struct.pack("<Q", view.nbytes) + bytes(view)


def training_state_digest(state: dict) -> str:
    """The digest of model and optimizer state together: the bit-exact-resume check of the training tests."""
    return state_digest({"model": state.get("model"), "optimizer": state.get("optimizer")})
