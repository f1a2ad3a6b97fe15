"""The manifest of a checkpoint, a ``.pth`` file or a sealed directory alike: its schema and digest checks,
``CheckpointInfo`` (what a reader returns), and the errors of reading a checkpoint.

Below both readers, ``reprotrain.checkpoint.reader`` (files) and ``reprotrain.checkpoint.sealed`` (directories):
reader hands a directory to sealed, and sealed needs nothing from reader. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from reprotrain import schema
from reprotrain.checkpoint import container
from reprotrain.checkpoint.location import Location
from reprotrain.errors import ReprotrainError


class CorruptCheckpoint(ReprotrainError):
    """Unreadable, truncated, damaged or invalid (exit code 2)."""

    exit_code = 2


class UnsafeCheckpoint(CorruptCheckpoint):
    """A checkpoint whose pickle imports something the weights-only unpickler does not allow (exit code 2).

    Never loaded, never resumed from, never verified OK, whatever its integrity trailer says.
    """

    exit_code = 2


class NotACheckpoint(ReprotrainError):
    """Not a reprotrain checkpoint: a plain PyTorch file, another zip, or something else (exit code 3).

    The foreign-file classifier refines this into a precise reason (and exit 2 for unsafe or unreadable files).
    """

    exit_code = 3


@functools.lru_cache(maxsize=1)
def manifest_schema_text() -> str:
    # The package's own directory, not importlib.resources (~6 ms of every command's start): reprotrain is
    # installed as files (wheel or editable), never imported from a zip.
    return (Path(__file__).parent / "schemas" / "manifest.schema.json").read_text(encoding="utf-8")


def validate_manifest(manifest: dict, *, path: str | os.PathLike | None = None) -> dict:
    if not schema.is_valid(manifest_schema_text(), manifest):
        err = schema.first_error(json.loads(manifest_schema_text()), manifest)
        if err is None:
            raise CorruptCheckpoint("manifest is invalid (nested too deeply to say where)", path=path)
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise CorruptCheckpoint(f"manifest is invalid at {where}: {err.message}", path=path)
    where = _non_finite_at(manifest)
    if where is not None:
        raise CorruptCheckpoint(f"manifest is invalid at {where}: NaN or infinity (strict JSON has neither; "
                                "reprotrain stores them as the strings \"NaN\", \"Infinity\", \"-Infinity\")",
                                path=path)
    return manifest


def _non_finite_at(doc) -> str | None:
    """Where a NaN or infinity sits in a parsed JSON document (Python's json reads `NaN`, `1e999`), or None."""
    stack = [(doc, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where or "(top level)"
        if isinstance(value, dict):
            stack.extend((v, f"{where}/{k}" if where else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}/{i}" if where else str(i)) for i, v in enumerate(value))
    return None


@dataclass
class CheckpointInfo:
    """What the zip directory and the manifest say, without reading tensor data."""

    path: Location
    manifest: dict
    directory: container.Directory
    size: int

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def step(self) -> int:
        return self.manifest["step"]

    @property
    def signature(self) -> dict | None:
        """``{"key_id", "time", "format"}`` as the signature line states them (not verified), or None when unsigned."""
        if self.directory is None:  # a sealed framework directory: never signed (yet)
            return None
        line = self.directory.signature
        return None if line is None else {"key_id": line.key_id, "time": line.time, "format": line.version}


def check_digests(manifest: dict, *, path=None) -> None:
    """``fingerprint_digest``, the keys of ``environments`` and each lineage segment's digest must be the digests
    of the fingerprints they name (a mismatch is a forged or damaged manifest: CorruptCheckpoint, exit 2)."""
    from reprotrain.fingerprint.document import digest

    def invalid(where: str, problem: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(f"manifest is invalid at {where}: {problem}", path=path)

    actual = digest(manifest["fingerprint"])
    if manifest["fingerprint_digest"] != actual:
        raise invalid("fingerprint_digest", f"{manifest['fingerprint_digest']} is not the digest of the recorded "
                                            f"fingerprint ({actual})")
    environments = manifest["environments"]
    for key, fingerprint in environments.items():
        if not isinstance(fingerprint, dict) or digest(fingerprint) != key:
            raise invalid(f"environments/{key}", "the fingerprint there does not have that digest")
    if actual not in environments:
        raise invalid("environments", "it does not hold the recorded fingerprint")
    for segment in manifest["lineage"]:
        if segment["fingerprint_digest"] not in environments:
            raise invalid(f"lineage/{segment['segment']}/fingerprint_digest",
                          f"{segment['fingerprint_digest']} is not a key of environments")
        for rank, key in enumerate(segment.get("rank_fingerprints") or ()):
            if key not in environments:
                raise invalid(f"lineage/{segment['segment']}/rank_fingerprints/{rank}",
                              f"{key} is not a key of environments")
