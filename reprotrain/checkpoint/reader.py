"""Reading checkpoints without unpickling: the manifest through the zip directory, integrity by re-hashing.

Every read of a checkpoint (``read_info`` with or without the integrity check, so `verify --no-digest`,
`ls` and resume selection too) also scans every pickle in the file statically (``pickle_scan``) and
refuses one that imports anything outside the weights-only allow-list (``UnsafeCheckpoint``, exit 2): the
integrity trailer proves only that nobody changed the file without recomputing it, and anyone can
recompute it. It also checks that the manifest's digests match the fingerprints they name.

The manifest checks, ``CheckpointInfo`` and the errors raised here are in `reprotrain.checkpoint.manifest`
(shared with `reprotrain.checkpoint.sealed`, to which a directory is handed).

Nothing here imports torch. Loading the training state (which needs torch) is in `reprotrain.checkpoint.state`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from typing import Iterator

from reprotrain import safeio
from reprotrain.checkpoint import container, pickle_scan, sealed
from reprotrain.checkpoint.container import DATA_PREFIX, MANIFEST_RECORD, ContainerError, NotAContainer
from reprotrain.checkpoint.location import Location, as_location, is_url  # noqa: F401  (re-exported)
from reprotrain.checkpoint.manifest import (CheckpointInfo, CorruptCheckpoint, NotACheckpoint, UnsafeCheckpoint,
                                            check_digests, validate_manifest)
from reprotrain.errors import ReprotrainError, os_error_message

PICKLE_RECORD = "archive/data.pkl"


def _open(path: "str | os.PathLike | Location"):
    location = Location.of(path)
    shown = str(location)
    try:
        if location.is_local:  # regular files only (a FIFO named .pth must not hang a reader, nor a device be read)
            return safeio.open_regular(location.path, limit=safeio.LIMITS["checkpoint"], what="checkpoint")
        return location.open("rb")
    except safeio.Missing:
        raise CorruptCheckpoint("no such file", path=shown) from None
    except ReprotrainError as exc:
        message = exc.message.removeprefix("cannot read checkpoint: ").removeprefix("checkpoint ")
        raise CorruptCheckpoint(message, path=shown) from None
    except IsADirectoryError:
        raise CorruptCheckpoint("is a directory, not a checkpoint file", path=shown) from None
    except FileNotFoundError:
        raise CorruptCheckpoint("no such file" if location.is_local else "no such object", path=shown) from None
    except PermissionError:
        raise CorruptCheckpoint("permission denied" if location.is_local else "access denied", path=shown) from None
    except ValueError as exc:  # protocol package missing (s3fs, gcsfs, adlfs) or a bad URL
        raise CorruptCheckpoint(f"cannot open: {exc}", path=shown) from None
    except OSError as exc:
        raise CorruptCheckpoint(f"cannot open: {os_error_message(exc)}", path=shown) from None


def _framework_directory(path) -> bool:
    """A directory read as a sealed checkpoint directory: it has the sidecar, a framework's checkpoint name
    (`checkpoint-N`, `checkpoint_N`) or a sharded checkpoint's (`*.dcp`). Any other directory is not a checkpoint
    file (CorruptCheckpoint, as before)."""
    location = Location.of(path)
    if not location.is_local or not location.path.is_dir():
        return False
    name = location.name
    return (sealed.is_sealed(location.path) or re.fullmatch(r"checkpoint[-_]\d+", name) is not None
            or name.endswith(sealed.SHARDED_SUFFIX))


def read_info(path: str | os.PathLike, *, check_integrity: bool = False, own_write: bool = False) -> CheckpointInfo:
    """Read and validate the manifest; with ``check_integrity`` first re-hash every byte of the file.

    ``own_write``: the file is one this process has just written with reprotrain's own pickler and renamed into
    place under the writer lock (RunDirectory.commit): its pickles are not scanned again. Every other read scans.

    A directory is read as a sealed checkpoint directory (reprotrain.checkpoint.sealed).

    Raises CorruptCheckpoint or NotACheckpoint. The integrity check comes before parsing so that a
    damaged file is reported as damaged, not as whatever its damaged manifest happens to say.
    """
    if _framework_directory(path):  # a framework's checkpoint directory, sealed by a sidecar (or not: NotACheckpoint)
        return sealed.read_info(path, check_integrity=check_integrity)
    with _open(path) as f:
        return _read_info(f, path, check_integrity=check_integrity, scan=not own_write)


@dataclass
class OpenCheckpoint:
    """A checkpoint read through one open file: its manifest, integrity and tensors all come from the same
    bytes, even if another process replaces the path meanwhile (a reader racing a writer's rename)."""

    info: CheckpointInfo
    file: object


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike, *, check_integrity: bool = False) -> Iterator[OpenCheckpoint]:
    if _framework_directory(path):  # a sealed directory: no single file to hold open (file None)
        yield OpenCheckpoint(read_info(path, check_integrity=check_integrity), None)
        return
    with _open(path) as f:
        yield OpenCheckpoint(_read_info(f, path, check_integrity=check_integrity), f)


def _read_info(f, path, *, check_integrity: bool, scan: bool = True) -> CheckpointInfo:
    try:
        directory = container.read_directory(f)
    except NotAContainer as exc:
        raise NotACheckpoint(f"not a reprotrain checkpoint ({exc})", path=path) from None
    except (ContainerError, OSError) as exc:
        raise CorruptCheckpoint(f"damaged checkpoint: {exc}", path=path) from None
    record = directory.records.get(MANIFEST_RECORD)
    if record is None:
        raise NotACheckpoint("not a reprotrain checkpoint (zip archive without a reprotrain manifest)", path=path)
    compressed = [r.name for r in directory.records.values() if r.method != 0]
    if compressed:
        raise CorruptCheckpoint(f"record {compressed[0]} is compressed; checkpoints store records uncompressed",
                                path=path)
    if directory.trailer_digest is None:
        raise CorruptCheckpoint("reprotrain manifest present but the integrity trailer is missing "
                                "(truncated or rewritten by another tool)", path=path)
    try:
        # Every pickle first: an unsafe file is called unsafe, whatever else is wrong with it.
        problem = scan_pickles(f, directory) if scan else None
        # A pickle that does not parse is damage or forgery: the integrity check says which (read anyway).
        if check_integrity or (problem is not None and not isinstance(problem, UnsafeCheckpoint)):
            report = container.check_integrity(f, directory)
            if not report.ok:
                if isinstance(problem, UnsafeCheckpoint):
                    problem.message += "; it also fails its integrity check"
                    raise problem.at(path)
                raise CorruptCheckpoint("; ".join(report.problems), path=path)
        if problem is not None:
            raise problem.at(path)
        if record.size > safeio.LIMITS["manifest"]:
            raise CorruptCheckpoint(f"manifest record is {record.size} bytes, larger than the "
                                    f"{safeio.LIMITS['manifest']} byte limit", path=path)
        raw = container.read_record(f, record)
    except (ContainerError, OSError) as exc:
        raise CorruptCheckpoint(f"damaged checkpoint: {exc}", path=path) from None
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptCheckpoint(f"manifest is not valid JSON: {str(exc)[:200]}", path=path) from None
    if not isinstance(manifest, dict):
        raise CorruptCheckpoint("manifest is not a JSON object", path=path)
    validate_manifest(manifest, path=path)
    check_digests(manifest, path=path)
    return CheckpointInfo(as_location(path), manifest, directory, directory.file_size)


class _Problem(CorruptCheckpoint):
    def at(self, path) -> CorruptCheckpoint:
        return (UnsafeCheckpoint if isinstance(self, _Unsafe) else CorruptCheckpoint)(self.message, path=path)


class _Unsafe(_Problem, UnsafeCheckpoint):
    pass


def scan_pickles(f, directory: container.Directory) -> "_Problem | None":
    """Scan ``archive/data.pkl`` and every other record that is a pickle, statically, streaming.

    Returns the problem (not raised, so that the caller can rank it against integrity): an unsafe import
    anywhere, or a ``data.pkl`` that is not a well-formed pickle. Tensor records (``archive/data/*``, raw
    bytes torch never unpickles) and the JSON manifest are not pickles and are skipped.
    """
    broken = None
    for rec in sorted(directory.records.values(), key=lambda r: r.data_offset):
        if rec.name.startswith(DATA_PREFIX) or rec.name == MANIFEST_RECORD:
            continue
        main = rec.name == PICKLE_RECORD
        if rec.size == 0:
            continue
        f.seek(rec.data_offset)
        proto = f.read(2)[:1] == b"\x80"
        f.seek(rec.data_offset)
        # Every record, whatever its name: a pickle of protocol 0 or 1 carries no marker.
        scan = pickle_scan.scan_pickle(pickle_scan.Window(f, rec.size),
                                       limit=min(rec.size, safeio.LIMITS["pickle"]))
        unsafe = pickle_scan.findings(scan, strict=main or proto or rec.name.endswith(".pkl"))
        if unsafe:
            shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
            return _Unsafe(f"unsafe pickle in {rec.name}: imports {shown} (not allowed by the weights-only "
                           "unpickler; nothing was loaded or executed)")
        if main and scan.error and broken is None:
            broken = _Problem(f"{rec.name} is not a well-formed pickle ({scan.error})")
    if PICKLE_RECORD not in directory.records:
        broken = broken or _Problem(f"no {PICKLE_RECORD} record")
    return broken


def check_integrity(info: CheckpointInfo, file=None, *, hash_tensors: bool = False) -> container.IntegrityReport:
    """Re-read every byte of the file (``file``: the already open one) and compare with the recorded digests.
    ``hash_tensors``: also the tensors' SHA-256 in the same pass (report.tensors_digest), for a signature check.

    A sealed directory (``info.directory`` None): every file re-hashed against its sidecar record.
    """
    if info.directory is None:
        try:
            doc = sealed.read_sidecar(info.path)
        except ReprotrainError as exc:
            return container.IntegrityReport(False, [exc.message], 0)
        problems, checked = sealed.check_files(info.path, doc["files"])
        return container.IntegrityReport(not problems, problems, checked)
    with contextlib.nullcontext(file) if file is not None else _open(info.path) as f:
        try:
            return container.check_integrity(f, info.directory, hash_tensors=hash_tensors)
        except (ContainerError, OSError) as exc:
            return container.IntegrityReport(False, [str(exc)], 0)


def read_valid(path: str | os.PathLike) -> CheckpointInfo:
    """read_info after a full integrity check; CorruptCheckpoint if any byte is off."""
    return read_info(path, check_integrity=True)
