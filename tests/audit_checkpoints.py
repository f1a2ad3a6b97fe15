"""Real reprotrain checkpoints for the audit tests, written with the checkpoint layer's own writer."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from reprotrain import fingerprint as fp
from reprotrain.checkpoint import format as ckformat


def small_state(seed: int = 0, features: int = 4) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(features, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, features)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def manifest_for(state: dict, fingerprint: dict, *, run_id: str = "run-a", step: int = 10, kind: str = "latest",
                 segments: int = 1) -> dict:
    digest = fp.digest(fingerprint)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    tensors = [t for part in state.values() for t in _tensors(part)]
    lineage = [{"segment": i, "first_step": i * 5, "last_step": step if i == segments - 1 else i * 5 + 5,
                "fingerprint_digest": digest, "started": f"2026-01-0{i + 1}T00:00:00Z", "ended": None,
                "end_reason": "running" if i == segments - 1 else "interrupted", "world_size": 1}
               for i in range(segments)]
    return {"format": "reprotrain.checkpoint", "format_version": 1, "kind": kind, "created": now, "run_id": run_id,
            "epoch": 1, "step": step, "samples_seen": step * 2, "metrics": {"val_loss": 0.5},
            "monitor": {"name": "val_loss", "mode": "min", "value": 0.5}, "config": {"lr": 0.1},
            "position": {}, "resumable": True, "fingerprint": fingerprint, "fingerprint_digest": digest,
            "environments": {digest: fingerprint}, "lineage": lineage,
            "state": {"components": sorted(state), "tensor_records": len(tensors),
                      "tensor_bytes": sum(t.nbytes for t in tensors)},
            "writer": {"reprotrain": "test", "torch": torch.__version__}}


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


def write_checkpoint(path: Path, *, state: dict | None = None, fingerprint: dict | None = None, **manifest_args) -> Path:
    state = state if state is not None else small_state()
    fingerprint = fingerprint if fingerprint is not None else fp.collect()
    with open(path, "wb") as handle:
        ckformat.write(handle, manifest_for(state, fingerprint, **manifest_args), state)
    return path


def write_fingerprint(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path
