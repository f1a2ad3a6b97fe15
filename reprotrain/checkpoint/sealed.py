"""Sealed checkpoint directories: a framework's own checkpoint folder (Hugging Face ``checkpoint-N/``, Accelerate
``checkpoint_N/``) made a reprotrain checkpoint by a sidecar manifest written last (docs/checkpoint-format.md, section 7).

The sidecar ``reprotrain-manifest.json`` holds the same manifest as a ``.pth`` checkpoint (fingerprint, lineage,
kind, step) and one integrity record (size, SHA-256) per file of the directory, plus a SHA-256 over itself. It is
written after every file it lists was fsynced, and committed by an atomic rename: a directory without it (a crash
while the framework was writing) is not a checkpoint, and any changed, missing or added byte is reported.

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from reprotrain.checkpoint.lock import durable_sync, fsync_directory
from reprotrain.checkpoint.manifest import (CheckpointInfo, CorruptCheckpoint, NotACheckpoint, check_digests,
                                            validate_manifest)

SIDECAR = "reprotrain-manifest.json"
SEAL_FORMAT = "reprotrain.sealed-directory"
SEAL_VERSION = 1
MAX_SIDECAR_BYTES = 16 << 20
SHARDED_SUFFIX = ".dcp"  # a sharded checkpoint directory (reprotrain.checkpoint.sharded)
_CHUNK = 1 << 20


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _walk(directory: Path) -> list[str]:
    """Relative POSIX paths of every entry below ``directory`` except the sidecar and unfinished sidecars."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = Path(root, name).relative_to(directory).as_posix()
            if rel == SIDECAR or (name.startswith(f".{SIDECAR}.") and name.endswith(".partial")):
                continue
            out.append(rel)
    return sorted(out)


def _hash_file(path: Path, *, sync: bool = False) -> tuple[int, str]:
    """(size, sha256 hex) of a regular file, read through one descriptor that refuses symlinks and devices."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        digest, size = hashlib.sha256(), 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        if sync:
            durable_sync(fd)
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fsync_directory(path)


def seal(directory: str | os.PathLike, manifest: dict, *, files: list[dict] | None = None) -> Path:
    """Make every file of ``directory`` durable, then commit the sidecar naming each one with its SHA-256.

    ``manifest`` is a checkpoint manifest (reprotrain/checkpoint/schemas/manifest.schema.json); its ``state``
    summary is filled in here. ``files``: records already computed (and files already made durable) by the caller,
    e.g. by every rank of a sharded save (reprotrain.checkpoint.sharded); they must name exactly the files present.
    Returns the sidecar's path.
    """
    directory = Path(directory)
    precomputed = files is not None
    files = sorted(files, key=lambda f: f["path"]) if precomputed else []
    try:
        if precomputed:
            if [f["path"] for f in files] != _walk(directory):
                raise OSError("the file records do not name exactly the files of the directory")
        else:
            for rel in _walk(directory):
                size, sha = _hash_file(directory / rel, sync=True)
                files.append({"path": rel, "size": size, "sha256": sha})
        for sub in sorted({Path(f["path"]).parent for f in files}, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(directory / sub)
    except OSError as exc:
        raise CorruptCheckpoint(f"cannot seal: {exc.strerror or exc}", path=directory) from None
    manifest = dict(manifest, state={"components": [f["path"] for f in files], "tensor_records": len(files),
                                     "tensor_bytes": sum(f["size"] for f in files)})
    validate_manifest(manifest, path=directory)
    check_digests(manifest, path=directory)
    body = {"format": SEAL_FORMAT, "format_version": SEAL_VERSION, "manifest": manifest, "files": files}
    doc = dict(body, integrity="sha256:" + hashlib.sha256(_canonical(body)).hexdigest())
    final = directory / SIDECAR
    tmp = directory / f".{SIDECAR}.{os.getpid()}.{os.urandom(4).hex()}.partial"
    try:
        with open(tmp, "xb") as f:
            f.write(json.dumps(doc, indent=1, sort_keys=True).encode())
            f.flush()
            durable_sync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return final


def is_sealed(directory: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(directory, SIDECAR))


def read_sidecar(directory: str | os.PathLike) -> dict:
    """The sidecar document after its own digest and the manifest schema were checked (files not re-hashed)."""
    directory = Path(directory)
    path = directory / SIDECAR
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        if directory.name.endswith(SHARDED_SUFFIX):  # committed by a rename only after sealing: the seal was removed
            raise CorruptCheckpoint(f"sharded checkpoint without its {SIDECAR} (deleted after the commit)",
                                    path=directory) from None
        raise NotACheckpoint(f"not a reprotrain checkpoint directory (no {SIDECAR}: never sealed, or the writer "
                             "died before sealing it)", path=directory) from None
    except OSError as exc:
        raise CorruptCheckpoint(f"cannot open {SIDECAR}: {exc.strerror or exc}", path=directory) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptCheckpoint(f"{SIDECAR} is not a regular file", path=directory)
        raw = os.read(fd, MAX_SIDECAR_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_SIDECAR_BYTES:
        raise CorruptCheckpoint(f"{SIDECAR} is larger than {MAX_SIDECAR_BYTES >> 20} MiB", path=directory)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CorruptCheckpoint(f"{SIDECAR} is not valid JSON: {exc}", path=directory) from None
    if not isinstance(doc, dict) or doc.get("format") != SEAL_FORMAT:
        raise CorruptCheckpoint(f"{SIDECAR} is not a {SEAL_FORMAT} document", path=directory)
    if doc.get("format_version") != SEAL_VERSION:
        raise CorruptCheckpoint(f"{SIDECAR} has format_version {doc.get('format_version')!r}; this reader knows "
                                f"{SEAL_VERSION}", path=directory)
    body = {k: doc.get(k) for k in ("format", "format_version", "manifest", "files")}
    try:
        expected = "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()
    except (TypeError, ValueError):
        expected = None
    if doc.get("integrity") != expected:
        raise CorruptCheckpoint(f"{SIDECAR} does not match its own integrity digest (damaged or edited)", path=directory)
    files = doc["files"]
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int)
            and isinstance(f.get("sha256"), str) for f in files):
        raise CorruptCheckpoint(f"{SIDECAR}: files must be a list of {{path, size, sha256}}", path=directory)
    if not isinstance(doc["manifest"], dict):
        raise CorruptCheckpoint(f"{SIDECAR}: manifest is not an object", path=directory)
    validate_manifest(doc["manifest"], path=directory)
    check_digests(doc["manifest"], path=directory)
    return doc


def check_files(directory: str | os.PathLike, files: list[dict]) -> tuple[list[str], int]:
    """(problems, bytes checked): every recorded file re-hashed, and files present but not recorded reported."""
    directory = Path(directory)
    problems, checked = [], 0
    recorded = {f["path"] for f in files}
    for entry in files:
        rel = entry["path"]
        if rel.startswith("/") or ".." in Path(rel).parts:
            problems.append(f"{rel}: recorded path leaves the directory")
            continue
        try:
            size, sha = _hash_file(directory / rel)
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        except OSError as exc:
            problems.append(f"{rel}: unreadable ({exc.strerror or exc})")
            continue
        checked += size
        if size != entry["size"]:
            problems.append(f"{rel}: size {size} bytes, sealed with {entry['size']}")
        elif sha != entry["sha256"]:
            problems.append(f"{rel}: content differs from the sealed SHA-256")
    try:
        present = _walk(directory)
    except OSError as exc:
        problems.append(f"cannot list the directory: {exc.strerror or exc}")
        present = []
    for rel in present:
        if rel not in recorded:
            problems.append(f"{rel}: not sealed (added after the checkpoint was sealed)")
    return problems, checked


def read_info(directory: str | os.PathLike, *, check_integrity: bool = False) -> CheckpointInfo:
    """The directory's manifest as a CheckpointInfo (``directory`` attribute None); with ``check_integrity`` every
    file is re-hashed first. Raises CorruptCheckpoint or NotACheckpoint, like reader.read_info for files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CorruptCheckpoint("no such directory", path=directory)
    doc = read_sidecar(directory)
    if check_integrity:
        problems, _ = check_files(directory, doc["files"])
        if problems:
            raise CorruptCheckpoint("; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5
                                                               else ""), path=directory)
    return CheckpointInfo(directory, doc["manifest"], None, sum(f["size"] for f in doc["files"]))
