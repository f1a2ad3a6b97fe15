"""`reprotrain diff`: tensor, fingerprint, lineage and manifest differences between two checkpoints.

Both files pass the full integrity and pickle checks first: diff never compares a damaged or unsafe file.
The tensor comparison (``tensors=True``, the default) loads both states with the weights-only unpickler and
compares every model and optimizer tensor bit for bit (dtype, shape and bytes: a NaN equals the same NaN);
``tensors=False`` reads manifests only and never imports torch.
"""

from __future__ import annotations

import os
from typing import Any

from reprotrain.audit.opening import load_checkpoint, open_checkpoint

_LISTED = 20  # differing tensor names shown per group


def _flat(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _load_state(path) -> dict:
    from reprotrain.checkpoint import state as ckstate

    with open_checkpoint(path) as opened:
        return ckstate.load(opened, verify=True)["state"]


def _leaf_map(tree: Any) -> dict:
    from reprotrain.audit.digest import _leaves

    return {".".join(path): leaf for path, leaf in _leaves(tree)}


def _same_leaf(x, y) -> bool:
    import torch

    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            return False
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        fx, fy = x.detach().cpu().contiguous().reshape(-1), y.detach().cpu().contiguous().reshape(-1)
        if fx.numel() == 0:
            return True
        return torch.equal(fx.view(torch.uint8), fy.view(torch.uint8))  # bits, not values: NaN == NaN here
    return repr(x) == repr(y)


def _compare_group(a: dict, b: dict) -> dict:
    differing = sorted(name for name in set(a) & set(b) if not _same_leaf(a[name], b[name]))
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    import torch

    tensors = sum(isinstance(v, torch.Tensor) for v in a.values())
    return {"identical": not differing and not only_a and not only_b, "tensors": tensors,
            "differing": len(differing), "differing_names": differing[:_LISTED],
            "only_a": only_a[:_LISTED], "only_b": only_b[:_LISTED]}


def compare_tensors(a: str | os.PathLike, b: str | os.PathLike) -> dict:
    """Are the model tensors, and the model and optimizer tensors together, bit-identical in A and B?"""
    state_a, state_b = _load_state(a), _load_state(b)
    model = _compare_group(_leaf_map({"model": state_a.get("model")}), _leaf_map({"model": state_b.get("model")}))
    optimizer = _compare_group(_leaf_map({"optimizer": state_a.get("optimizer")}),
                               _leaf_map({"optimizer": state_b.get("optimizer")}))
    both = {"identical": model["identical"] and optimizer["identical"],
            "tensors": model["tensors"] + optimizer["tensors"],
            "differing": model["differing"] + optimizer["differing"]}
    return {"model": model, "optimizer": optimizer, "model_and_optimizer": both}


def diff_paths(a: str | os.PathLike, b: str | os.PathLike, *, tensors: bool = True) -> dict:
    """Tensor, fingerprint, lineage and manifest differences between checkpoints A and B.

    ``tensors=False``: manifests only (no torch import)."""
    from reprotrain import fingerprint as fp

    info_a, info_b = load_checkpoint(a), load_checkpoint(b)
    ma, mb = info_a.manifest, info_b.manifest
    # Severity as a resume of A's run in B's environment would see it.
    comparison = fp.compare(ma["fingerprint"], mb["fingerprint"], fp.Policy())
    la, lb = ma["lineage"], mb["lineage"]
    common = 0
    for seg_a, seg_b in zip(la, lb):
        if (seg_a["segment"], seg_a["first_step"], seg_a["fingerprint_digest"], seg_a["started"]) != \
                (seg_b["segment"], seg_b["first_step"], seg_b["fingerprint_digest"], seg_b["started"]):
            break
        common += 1
    fields = []
    flat_a = _flat({k: v for k, v in ma.items() if k not in ("fingerprint", "environments", "lineage")})
    flat_b = _flat({k: v for k, v in mb.items() if k not in ("fingerprint", "environments", "lineage")})
    for name in sorted(set(flat_a) | set(flat_b)):
        if flat_a.get(name) != flat_b.get(name):
            fields.append({"field": name, "a": flat_a.get(name), "b": flat_b.get(name)})
    lineage = {"same_run": ma["run_id"] == mb["run_id"], "common_segments": common,
               "only_a": la[common:], "only_b": lb[common:]}
    identical = not comparison.differences and not lineage["only_a"] and not lineage["only_b"]
    result = {"a": str(a), "b": str(b), "identical_environment_and_lineage": identical,
              "fingerprint": comparison.to_json(), "lineage": lineage, "manifest": fields}
    if tensors and (info_a.directory is None or info_b.directory is None):
        # A sealed framework directory or a sharded .dcp checkpoint: its tensors are in the framework's or DCP's own
        # files, not in one weights-only pickle; compared by manifest (and per-file SHA-256 by verify) only.
        result["tensors_skipped"] = "checkpoint directories: tensors not compared (manifests only)"
    elif tensors:
        result["tensors"] = compare_tensors(a, b)
    return result


def exit_code(result: dict) -> int:
    """6 when model or optimizer tensors differ; else 1 when the environments differ (or, manifests only, the
    environment or lineage); else 0. Two bit-identical runs (different run ids) exit 0."""
    if "tensors" in result:
        if not result["tensors"]["model_and_optimizer"]["identical"]:
            return 6
        return 1 if result["fingerprint"]["differences"] else 0
    return 0 if result["identical_environment_and_lineage"] else 1
