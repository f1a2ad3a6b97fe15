"""`reprotrain ls`: the checkpoints of a run directory and the one resume would pick."""

from __future__ import annotations

import os


def list_run(run_dir: str | os.PathLike, *, deep: bool = True) -> dict:
    """Every checkpoint of RUN_DIR with kind, epoch, step, monitored metric, size, created, validity, and the
    one resume would pick (``deep`` re-hashes every file, as resume does before picking)."""
    from reprotrain.checkpoint import store

    entries = store.list_checkpoints(run_dir, deep=deep, frameworks=True)  # Lightning files, sealed directories
    chosen = store.select_for_resume(entries)
    rows = []
    for entry in entries:
        manifest = entry.info.manifest if entry.info is not None else {}
        monitor = manifest.get("monitor") or None
        rows.append({
            "name": entry.path.name,
            "path": str(entry.path),
            "kind": manifest.get("kind"),
            "epoch": manifest.get("epoch"),
            "step": manifest.get("step"),
            "monitor": monitor,
            "size": entry.size,
            "created": manifest.get("created"),
            "signer": entry.info.signature["key_id"] if entry.info is not None and entry.info.signature else None,
            "valid": entry.valid,
            "problem": entry.problem,
            "resume": chosen is not None and entry.path == chosen.path,
        })
    return {"run_dir": str(run_dir), "checkpoints": rows,
            "resume": str(chosen.path) if chosen is not None else None}
