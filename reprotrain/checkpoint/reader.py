"""Reading checkpoints without unpickling: the manifest through the zip directory, integrity by re-hashing.

Nothing here imports torch. Loading the training state (which needs torch) is in `reprotrain.checkpoint.state`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from reprotrain.checkpoint import container
from reprotrain.checkpoint.container import MANIFEST_RECORD, ContainerError, NotAContainer
from reprotrain.errors import ReprotrainError


class CorruptCheckpoint(ReprotrainError):
    """Unreadable, truncated, damaged or invalid (exit code 2)."""

    exit_code = 2


class NotACheckpoint(ReprotrainError):
    """Not a reprotrain checkpoint: a plain PyTorch file, another zip, or something else (exit code 3).

    The foreign-file classifier refines this into a precise reason (and exit 2 for unsafe or unreadable files).
    """

    exit_code = 3


@functools.lru_cache(maxsize=1)
def manifest_validator():
    import jsonschema

    schema = json.loads(resources.files("reprotrain.checkpoint").joinpath("schemas/manifest.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: dict, *, path: str | os.PathLike | None = None) -> dict:
    errors = sorted(manifest_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise CorruptCheckpoint(f"manifest is invalid at {where}: {err.message}", path=path)
    return manifest


@dataclass
class CheckpointInfo:
    """What the zip directory and the manifest say, without reading tensor data."""

    path: Path
    manifest: dict
    directory: container.Directory
    size: int

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def step(self) -> int:
        return self.manifest["step"]


class ObjectURL(str):
    """A checkpoint or run directory in an object store (``s3://bucket/key``): a str with ``name`` and ``/`` as a Path has.

    ``pathlib.Path`` would collapse ``s3://`` into ``s3:/``, so URLs keep their own type.
    """

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, other: str) -> "ObjectURL":
        return ObjectURL(f"{self.rstrip('/')}/{other}")


def is_url(location) -> bool:
    """True for fsspec URLs other than local files (s3://, gs://, oss://, memory://, ...)."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def as_location(location: str | os.PathLike) -> "Path | ObjectURL":
    """A Path for local files, an ObjectURL for object-store URLs."""
    if isinstance(location, ObjectURL):
        return location
    if is_url(location):
        return ObjectURL(location)
    return Path(location)


def _open_url(url: str):
    import fsspec

    try:
        fs, key = fsspec.core.url_to_fs(url)
        return fs.open(key, "rb", block_size=8 << 20)
    except FileNotFoundError:
        raise CorruptCheckpoint("no such object", path=url) from None
    except PermissionError:
        raise CorruptCheckpoint("access denied", path=url) from None
    except (ImportError, ValueError) as exc:  # protocol package missing (s3fs, ossfs, gcsfs) or bad URL
        raise CorruptCheckpoint(f"cannot open: {exc}", path=url) from None
    except OSError as exc:
        raise CorruptCheckpoint(f"cannot open: {exc.strerror or exc}", path=url) from None


def _open(path: str | os.PathLike):
    if is_url(path):
        return _open_url(path)
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise CorruptCheckpoint("is a directory, not a checkpoint file", path=path) from None
    except FileNotFoundError:
        raise CorruptCheckpoint("no such file", path=path) from None
    except PermissionError:
        raise CorruptCheckpoint("permission denied", path=path) from None
    except OSError as exc:
        raise CorruptCheckpoint(f"cannot open: {exc.strerror or exc}", path=path) from None


def read_info(path: str | os.PathLike, *, check_integrity: bool = False) -> CheckpointInfo:
    """Read and validate the manifest; with ``check_integrity`` first re-hash every byte of the file.

    Raises CorruptCheckpoint or NotACheckpoint. The integrity check comes before parsing so that a
    damaged file is reported as damaged, not as whatever its damaged manifest happens to say.
    """
    with _open(path) as f:
        return _read_info(f, path, check_integrity=check_integrity)


@dataclass
class OpenCheckpoint:
    """A checkpoint read through one open file: its manifest, integrity and tensors all come from the same
    bytes, even if another process replaces the path meanwhile (a reader racing a writer's rename)."""

    info: CheckpointInfo
    file: object


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike, *, check_integrity: bool = False) -> Iterator[OpenCheckpoint]:
    with _open(path) as f:
        yield OpenCheckpoint(_read_info(f, path, check_integrity=check_integrity), f)


def _read_info(f, path, *, check_integrity: bool) -> CheckpointInfo:
    try:
        directory = container.read_directory(f)
    except NotAContainer as exc:
        raise NotACheckpoint(f"not a reprotrain checkpoint ({exc})", path=path) from None
    except (ContainerError, OSError) as exc:
        raise CorruptCheckpoint(f"damaged checkpoint: {exc}", path=path) from None
    record = directory.records.get(MANIFEST_RECORD)
    if record is None:
        raise NotACheckpoint("not a reprotrain checkpoint (zip archive without a reprotrain manifest)", path=path)
    if directory.trailer_digest is None:
        raise CorruptCheckpoint("reprotrain manifest present but the integrity trailer is missing "
                                "(truncated or rewritten by another tool)", path=path)
    try:
        if check_integrity:
            report = container.check_integrity(f, directory)
            if not report.ok:
                raise CorruptCheckpoint("; ".join(report.problems), path=path)
        raw = container.read_record(f, record)
    except (ContainerError, OSError) as exc:
        raise CorruptCheckpoint(f"damaged checkpoint: {exc}", path=path) from None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise CorruptCheckpoint(f"manifest is not valid JSON: {exc}", path=path) from None
    if not isinstance(manifest, dict):
        raise CorruptCheckpoint("manifest is not a JSON object", path=path)
    validate_manifest(manifest, path=path)
    return CheckpointInfo(as_location(path), manifest, directory, directory.file_size)


@dataclass
class IntegrityResult:
    ok: bool
    problems: list[str] = field(default_factory=list)
    bytes_checked: int = 0


def check_integrity(info: CheckpointInfo, file=None) -> IntegrityResult:
    """Re-read every byte of the file (``file``: the already open one) and compare with the recorded digests."""
    with contextlib.nullcontext(file) if file is not None else _open(info.path) as f:
        try:
            report = container.check_integrity(f, info.directory)
        except (ContainerError, OSError) as exc:
            return IntegrityResult(False, [str(exc)], 0)
    return IntegrityResult(report.ok, report.problems, report.bytes_checked)


def read_valid(path: str | os.PathLike) -> CheckpointInfo:
    """read_info after a full integrity check; CorruptCheckpoint if any byte is off."""
    return read_info(path, check_integrity=True)
