"""Auditing checkpoints: verify, inspect, list and diff (the library behind `reprotrain verify|inspect|ls|diff`).

``verify_paths(..., digest=False)`` reads only zip directories and manifests and never imports torch;
``inspect_path`` and the state digests load tensors (torch, weights-only, memory-mapped).

Exit codes of a verification (docs/checkpoints.md): 0 ok (warnings allowed), 1 environment refused by
policy, 2 corrupt, unreadable or invalid (unsafe pickles included), 3 a readable PyTorch file that is not
a reprotrain checkpoint. Several files: the worst one, ranked 2 > 3 > 1 > 0, because a damaged file
is the most urgent finding and a foreign file means the gate checked nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from reprotrain.checkpoint import foreign, reader
from reprotrain.errors import ReprotrainError

_SEVERITY_RANK = {2: 3, 3: 2, 1: 1, 0: 0}


def worst_exit_code(codes: Iterable[int]) -> int:
    """The overall exit code of several results: 2 > 3 > 1 > 0."""
    return max(codes, key=lambda code: _SEVERITY_RANK.get(code, 4), default=0)


@dataclass
class VerifyResult:
    """The verdict on one file."""

    path: str
    exit_code: int
    category: str  # checkpoint | environment-refused | corrupt | invalid-manifest | a foreign.Classification category
    reason: str  # one line
    integrity: dict | None = None  # {"ok", "problems", "bytes_checked"}; None when not checked
    schema_ok: bool | None = None  # manifest validated against the schema; None when no manifest was found
    fingerprint: dict | None = None  # Comparison.to_json() against the reference environment
    lock: list[dict] | None = None  # check_fingerprint_against_lock rows, with --lock
    warnings: list[str] = field(default_factory=list)
    manifest: dict | None = None  # run_id, kind, epoch, step, created of a reprotrain checkpoint

    def to_dict(self) -> dict:
        return asdict(self)


class _Reference:
    """The environment to compare recorded fingerprints with, loaded once for all files."""

    def __init__(self, against, lock, policy, on_mismatch):
        from reprotrain import fingerprint as fp

        self.policy = fp.Policy.load(policy, on_mismatch=on_mismatch)
        self.on_mismatch = on_mismatch
        self.against = os.fspath(against) if against is not None else None
        self.fingerprint = fp.load(against) if against is not None else None
        self.lock = os.fspath(lock) if lock is not None else None
        if self.lock is not None:
            from reprotrain.envlock.lockfile import read_lockfile

            read_lockfile(self.lock)  # a bad lock file is bad input for every file: fail once, up front

    def live(self) -> dict:
        if self.fingerprint is None:
            from reprotrain import fingerprint as fp

            self.fingerprint = fp.collect()
        return self.fingerprint

    @property
    def label(self) -> str:
        return self.against or "the live environment"


def verify_paths(paths: Iterable[str | os.PathLike], *, against=None, lock=None, policy=None,
                 on_mismatch: str | None = None, digest: bool = True) -> list[VerifyResult]:
    """Verify every path: integrity (unless ``digest`` is false), schema, and the recorded fingerprint against
    ``against`` (a fingerprint JSON) or the live environment, and against ``lock`` (a conda-lock.yml) if given.

    Errors in the shared inputs (fingerprint, policy, lock files) raise ReprotrainError; problems with a
    checkpoint become that file's result.
    """
    reference = _Reference(against, lock, policy, on_mismatch)
    return [_verify_one(Path(p), reference, digest) for p in paths]


def _manifest_summary(manifest: dict) -> dict:
    return {key: manifest.get(key) for key in ("run_id", "kind", "epoch", "step", "created")}


def _verify_one(path: Path, reference: _Reference, digest: bool) -> VerifyResult:
    from reprotrain import fingerprint as fp

    shown = os.fspath(path)
    try:
        with reader.open_checkpoint(path) as opened:  # manifest and integrity from one open file
            info = opened.info
            integrity = reader.check_integrity(info, opened.file) if digest else None
    except reader.NotACheckpoint:
        verdict = foreign.classify(path)
        return VerifyResult(shown, verdict.exit_code, verdict.category, verdict.reason)
    except reader.CorruptCheckpoint as exc:
        invalid = exc.message.startswith("manifest is invalid")
        return VerifyResult(shown, 2, "invalid-manifest" if invalid else "corrupt", exc.message,
                            schema_ok=False if invalid else None)
    result = VerifyResult(shown, 0, "checkpoint", "", schema_ok=True, manifest=_manifest_summary(info.manifest))
    if digest:
        result.integrity = {"ok": integrity.ok, "problems": integrity.problems,
                            "bytes_checked": integrity.bytes_checked}
        if not integrity.ok:
            result.exit_code, result.category = 2, "corrupt"
            result.reason = "; ".join(integrity.problems)
            return result
    try:
        comparison = fp.compare(info.manifest["fingerprint"], reference.live(), reference.policy)
    except ReprotrainError as exc:
        result.exit_code, result.category, result.schema_ok = 2, "invalid-manifest", False
        result.reason = f"recorded fingerprint is invalid: {exc.message}"
        return result
    result.fingerprint = comparison.to_json()
    refused = [d.field for d in comparison.differences if d.severity == "refuse"]
    warned = [d.field for d in comparison.differences if d.severity == "warn"]
    result.warnings += [f"{name} differs from {reference.label}" for name in warned]
    if reference.lock is not None:
        from reprotrain.envlock.fingerprint_section import check_fingerprint_against_lock

        try:
            result.lock = check_fingerprint_against_lock(info.manifest["fingerprint"], reference.lock)
        except ReprotrainError as exc:
            result.lock = []
            refused.append(f"lock ({exc.message})")
        for row in result.lock:
            if row["ok"]:
                continue
            text = f"{row['field']} {row['recorded']} is not the locked {row['locked']}"
            if reference.on_mismatch == "ignore":
                continue
            if reference.on_mismatch == "warn":
                result.warnings.append(text)
            else:
                refused.append(f"lock: {text}")
    checked = "integrity verified" if digest else "integrity not checked (--no-digest)"
    if refused:
        result.exit_code, result.category = 1, "environment-refused"
        result.reason = (f"environment refused by policy against {reference.label}: {', '.join(refused)}; "
                         f"to allow: {comparison.allow_hint() or '--on-mismatch warn'}")
    else:
        state = f"{len(result.warnings)} warnings" if result.warnings else "environment matches"
        result.reason = f"ok: {checked}, manifest valid, {state}"
    return result


# --------------------------------------------------------------------------- digests


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


# --------------------------------------------------------------------------- inspect


def _load_checkpoint(path: str | os.PathLike) -> reader.CheckpointInfo:
    """read_info, turning a foreign file into an error with its classification (exit 2 or 3)."""
    try:
        return reader.read_info(path)
    except reader.NotACheckpoint:
        verdict = foreign.classify(path)
        raise ReprotrainError(verdict.reason, path=path, exit_code=verdict.exit_code) from None


@contextlib.contextmanager
def _open_checkpoint(path: str | os.PathLike):
    """reader.open_checkpoint, turning a foreign file into an error with its classification (exit 2 or 3)."""
    try:
        opened = reader.open_checkpoint(path)
        value = opened.__enter__()
    except reader.NotACheckpoint:
        verdict = foreign.classify(path)
        raise ReprotrainError(verdict.reason, path=path, exit_code=verdict.exit_code) from None
    try:
        yield value
    finally:
        opened.__exit__(None, None, None)


def inspect_path(path: str | os.PathLike, *, largest: int = 5) -> dict:
    """Manifest, lineage, integrity, a tensor summary and the model-state digest of a checkpoint."""
    from reprotrain.checkpoint import state as state_module

    # One open file for manifest, integrity and tensors: a writer replacing the path meanwhile cannot mix two files.
    with _open_checkpoint(path) as opened:
        info = opened.info
        integrity = reader.check_integrity(info, opened.file)
        if not integrity.ok:
            raise reader.CorruptCheckpoint("; ".join(integrity.problems), path=path)
        state = state_module.load(opened, map_location="cpu", mmap=True)["state"]
    tensors = [(path_, leaf) for path_, leaf in _leaves(state) if _is_tensor(leaf)]
    dtypes: dict[str, int] = {}
    for _, tensor in tensors:
        dtypes[str(tensor.dtype).removeprefix("torch.")] = dtypes.get(str(tensor.dtype).removeprefix("torch."), 0) + 1
    biggest = sorted(tensors, key=lambda item: item[1].nbytes, reverse=True)[:largest]
    manifest = info.manifest
    return {
        "path": os.fspath(path),
        "size": info.size,
        "integrity": {"ok": integrity.ok, "bytes_checked": integrity.bytes_checked},
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


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


# --------------------------------------------------------------------------- diff


def _flat(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def diff_paths(a: str | os.PathLike, b: str | os.PathLike) -> dict:
    """Fingerprint, lineage and manifest differences between checkpoints A and B (manifests only, no torch)."""
    from reprotrain import fingerprint as fp

    info_a, info_b = _load_checkpoint(a), _load_checkpoint(b)
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
    return {"a": os.fspath(a), "b": os.fspath(b), "identical_environment_and_lineage": identical,
            "fingerprint": comparison.to_json(), "lineage": lineage, "manifest": fields}


# --------------------------------------------------------------------------- ls


def list_run(run_dir: str | os.PathLike, *, deep: bool = True) -> dict:
    """Every checkpoint of RUN_DIR with kind, epoch, step, monitored metric, size, created, validity, and the
    one resume would pick (``deep`` re-hashes every file, as resume does before picking)."""
    from reprotrain.checkpoint import store

    entries = store.list_checkpoints(run_dir, deep=deep)
    chosen = store.select_for_resume(entries)
    rows = []
    for entry in entries:
        manifest = entry.info.manifest if entry.info is not None else {}
        monitor = manifest.get("monitor") or None
        rows.append({
            "name": entry.path.name,
            "path": os.fspath(entry.path),
            "kind": manifest.get("kind"),
            "epoch": manifest.get("epoch"),
            "step": manifest.get("step"),
            "monitor": monitor,
            "size": entry.path.stat().st_size if entry.path.exists() else None,
            "created": manifest.get("created"),
            "valid": entry.valid,
            "problem": entry.problem,
            "resume": chosen is not None and entry.path == chosen.path,
        })
    return {"run_dir": os.fspath(run_dir), "checkpoints": rows,
            "resume": os.fspath(chosen.path) if chosen is not None else None}
