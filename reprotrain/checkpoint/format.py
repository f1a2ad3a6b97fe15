"""Writing and reading reprotrain checkpoint files (see docs/checkpoint-format.md).

A checkpoint is one `.pth` file: ``torch.load(path, weights_only=True)`` returns
``{"reprotrain": <manifest dict>, "state": {...training state...}}``. The same manifest is also stored
as JSON in its own zip record so that tools read it without unpickling and without importing torch.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import pickle
import sys
from typing import Any, BinaryIO

from dataclasses import dataclass

from reprotrain.checkpoint import container
from reprotrain.checkpoint.container import ARCHIVE, MANIFEST_RECORD, ContainerWriter
from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.manifest import CheckpointInfo

FORMAT_NAME = "reprotrain.checkpoint"
FORMAT_VERSION = 1
PICKLE_PROTOCOL = 2  # what torch.save uses; the weights-only unpickler reads it


# How a non-finite float is stored where JSON must hold it (config, position, integrations): strict JSON has no
# NaN or infinity, and a checkpoint must never fail to be written because of one (docs/checkpoint-format.md).
NON_FINITE_STRINGS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_safe(value: Any) -> Any:
    """A copy of VALUE that strict JSON can hold: non-finite floats become "NaN", "Infinity" or "-Infinity";
    tuples become lists; numpy and other numeric scalars become int or float; non-string keys and any other
    value become their ``str()``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else NON_FINITE_STRINGS[repr(value)]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def _storage_bytes(storage) -> memoryview:
    """A zero-copy byte view of a CPU untyped storage (copied to CPU first if it lives elsewhere)."""
    import torch

    if storage.device.type != "cpu":
        storage = storage.cpu()
    as_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
    return memoryview(as_bytes.numpy()).cast("B") if storage.nbytes() else memoryview(b"")


def _location(storage) -> str:
    dev = storage.device
    return "cpu" if dev.type == "cpu" else f"{dev.type}:{dev.index or 0}"


def serialize(obj: Any) -> tuple[bytes, list[tuple[str, Any]]]:
    """Pickle ``obj`` the way torch.save does: storages become persistent ids ("storage", type, key, location, numel).

    Returns the pickle bytes and the list of (record name, untyped storage) to write after it.
    """
    import torch

    storages: dict[int, tuple[str, Any]] = {}

    class _Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if isinstance(value, torch.storage.TypedStorage):
                untyped = value._untyped_storage
                storage_type = getattr(torch, value._pickle_storage_type())
                numel = value._size()
            elif isinstance(value, torch.UntypedStorage):
                untyped = value
                storage_type = torch.UntypedStorage
                numel = value.nbytes()
            else:
                return None
            key = storages.setdefault(untyped._cdata, (str(len(storages)), untyped))[0]
            return ("storage", storage_type, key, _location(untyped), numel)

    buf = io.BytesIO()
    _Pickler(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue(), list(storages.values())


@dataclass(frozen=True)
class Written:
    """What write() put in the file: its integrity digest, and what a reader would parse back (the manifest after
    its JSON round trip, the zip directory), so that the writer lists its own checkpoint without reading it."""

    digest: str
    manifest: dict
    directory: container.Directory

    def checkpoint_info(self, location: Location) -> CheckpointInfo:
        return CheckpointInfo(location, self.manifest, self.directory, self.directory.file_size)


def write(fileobj: BinaryIO, manifest: dict, state: dict, *, force_zip64: bool = False, signer=None) -> Written:
    """Write a checkpoint to an open binary file; return what was written (`Written`). The caller makes it durable.

    ``signer`` (a `reprotrain.checkpoint.signing.SigningKey`) signs the integrity digest and the tensors' SHA-256
    (hashed on the CRC-32 thread while they are written) into the trailer.
    """
    manifest_json = json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    # The pickled copy is rebuilt from the JSON so that it holds only plain types (no str subclasses).
    pickled, storages = serialize({"reprotrain": json.loads(manifest_json), "state": state})
    writer = ContainerWriter(fileobj, force_zip64=force_zip64, hash_tensors=signer is not None)
    writer.write_record(f"{ARCHIVE}/data.pkl", pickled)
    writer.write_record(f"{ARCHIVE}/.format_version", b"1")
    writer.write_record(f"{ARCHIVE}/.storage_alignment", str(container.ALIGNMENT).encode())
    writer.write_record(f"{ARCHIVE}/byteorder", sys.byteorder.encode())
    writer.write_record(MANIFEST_RECORD, manifest_json)
    for key, storage in storages:
        writer.write_record(f"{ARCHIVE}/data/{key}", _storage_bytes(storage))
    writer.write_record(f"{ARCHIVE}/version", b"3\n")
    digest = writer.close(signer.sign_digest if signer is not None else None)
    return Written(digest, json.loads(manifest_json), writer.directory)  # its own copy: the listing's
