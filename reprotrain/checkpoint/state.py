"""The training state tree: what goes under "state" in a checkpoint, checked to hold only safe types."""

from __future__ import annotations

import io
import os
import re
from collections import OrderedDict
from typing import Any

import torch

from reprotrain.checkpoint import container, reader, signing
from reprotrain.checkpoint.manifest import CorruptCheckpoint, NotACheckpoint
from reprotrain.errors import ReprotrainError, torch_message

# Exact types: subclasses (numpy.str_, TorchVersion, defaultdict) would pickle as their own class.
_PLAIN = frozenset({str, int, float, bool, type(None), bytes, complex, torch.dtype, torch.device, torch.Size})
_SECRET_KEY = re.compile(r"(token|secret|passw(or)?d|api[_-]?key|access[_-]?key|private[_-]?key|credential)", re.I)
REDACTED = "<redacted>"


class UnsafeState(ReprotrainError):
    exit_code = 2


def check_tree(value: Any, where: str = "state") -> None:
    """Refuse anything the weights-only unpickler could not read back (arbitrary class instances)."""
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            raise UnsafeState(f"{where} is a {type(value).__name__} (a tensor subclass); store a plain tensor")
        return
    if type(value) in _PLAIN:
        return
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int, float, bool, type(None)):
                raise UnsafeState(f"{where} has a key of type {type(k).__name__}; use str or int keys")
            check_tree(v, f"{where}[{k!r}]")
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            check_tree(v, f"{where}[{i}]")
        return
    raise UnsafeState(f"{where} is a {type(value).__module__}.{type(value).__qualname__} instance; checkpoints hold "
                      "only tensors and plain values (dict, list, tuple, str, numbers, bool, None) so that "
                      "torch.load(weights_only=True) can read them")


def redact_secrets(value: Any) -> Any:
    """Copy of a config tree with values under secret-looking keys replaced (tokens never reach a checkpoint)."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "") else redact_secrets(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v) for v in value]
    return value


def tensor_stats(tree: Any) -> tuple[int, int]:
    """(number of distinct storages, their bytes) in a state tree."""
    seen: dict[int, int] = {}

    def walk(v):
        if isinstance(v, torch.Tensor):
            s = v.untyped_storage()
            seen[s._cdata] = s.nbytes()
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(tree)
    return len(seen), sum(seen.values())


class Snapshot:
    """Reusable CPU buffers for copying a state tree off the training thread's tensors (asynchronous saves).

    Buffers are kept between saves, keyed by position in the tree, so a steady-state snapshot is a memcpy
    into memory that is already mapped (no page faults, no allocator traffic). CUDA tensors are copied into pinned
    buffers without blocking: ``copied()`` then gives the events the copies complete at, which the saving thread
    waits for; the training thread goes on at once (its next kernels queue behind the copies on the same stream).
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}
        self._cuda_devices: set[torch.device] = set()  # devices copied from since the last copied()

    def take(self, tree: Any) -> Any:
        """A copy of TREE whose tensors are this snapshot's buffers (plain values are shared: immutable)."""
        with torch.no_grad():  # the copies are not part of any graph (no detach() per tensor)
            return self._take(tree, "")

    def _take(self, tree: Any, where: str) -> Any:
        if isinstance(tree, torch.Tensor):
            cuda = tree.is_cuda
            buf = self._buffers.get(where)
            if buf is None or buf.shape != tree.shape or buf.dtype != tree.dtype:
                buf = torch.empty(tree.shape, dtype=tree.dtype, device="cpu",
                                  pin_memory=cuda and torch.cuda.is_available())
                self._buffers[where] = buf
            buf.copy_(tree, non_blocking=cuda)
            if cuda:
                self._cuda_devices.add(tree.device)
            return buf
        if isinstance(tree, dict):
            return type(tree)((k, self._take(v, f"{where}/{k}")) for k, v in tree.items()) \
                if isinstance(tree, OrderedDict) else {k: self._take(v, f"{where}/{k}") for k, v in tree.items()}
        if isinstance(tree, list):
            return [self._take(v, f"{where}/{i}") for i, v in enumerate(tree)]
        if isinstance(tree, tuple):
            return tuple(self._take(v, f"{where}/{i}") for i, v in enumerate(tree))
        return tree  # immutable plain value

    def copied(self) -> list:
        """Events, one per CUDA device copied from, recorded on its current stream after the last ``take``'s copies:
        the buffers hold the snapshot once every event has completed (``event.synchronize()``). Empty for CPU state."""
        events = []
        for device in self._cuda_devices:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
        self._cuda_devices.clear()
        return events


def load(source: "str | os.PathLike | reader.OpenCheckpoint", *, map_location: Any = "cpu", mmap: bool = False,
         verify: bool = False, trusted=None) -> dict:
    """Load a checkpoint's object with the weights-only unpickler: {"reprotrain": manifest, "state": ...}.

    ``source`` is a path or an already open checkpoint (reader.open_checkpoint): then the very bytes whose
    manifest and integrity were checked are loaded, whatever happened to the path since. With ``verify`` (an
    open checkpoint only) every byte is checked against the integrity trailer while it is loaded, in one pass
    over the file: each tensor record is read straight into its tensor's memory and its CRC-32 computed there.
    ``trusted`` (a `signing.TrustedKeys`, with ``verify``): the same pass hashes the tensors and the signature must
    be a trusted one (signing.SignatureRefused otherwise), before anything is unpickled.
    """
    path = source.info.path if isinstance(source, reader.OpenCheckpoint) else source
    try:
        if isinstance(source, reader.OpenCheckpoint):
            if trusted is not None and not verify:
                raise ValueError("a signature is checked with the integrity pass: load(..., verify=True, trusted=...)")
            if verify and not mmap and _loads_on_cpu(map_location):
                obj = _load_verified(source, trusted)
            else:
                if verify:
                    _check_integrity(source, trusted)
                obj = _load_open(source.file, map_location=map_location, mmap=mmap)
        elif reader.is_url(path):  # object stores: read through fsspec (no mmap over the network)
            with reader._open(path) as f:
                obj = torch.load(f, map_location=map_location, weights_only=True)
        else:  # through an open regular file (a FIFO or device named .pth is refused, never handed to torch)
            with reader._open(path) as f:
                obj = _load_open(f, map_location=map_location, mmap=mmap)
    except (CorruptCheckpoint, signing.SignatureRefused):
        raise
    except Exception as exc:  # torch raises many types for damaged files; all mean the same to the user
        raise CorruptCheckpoint(f"cannot load: {torch_message(exc)}", path=path) from None
    if not isinstance(obj, dict) or "state" not in obj or "reprotrain" not in obj:
        raise NotACheckpoint("not a reprotrain checkpoint (no 'reprotrain' and 'state' keys)", path=path)
    return obj


def _loads_on_cpu(map_location: Any) -> bool:
    return map_location is None or str(map_location) == "cpu"


def _check_integrity(opened: "reader.OpenCheckpoint", trusted=None) -> None:
    result = reader.check_integrity(opened.info, opened.file, hash_tensors=trusted is not None)
    if not result.ok:
        raise CorruptCheckpoint("; ".join(result.problems), path=opened.info.path)
    _check_signature(opened, trusted, result)


def _check_signature(opened: "reader.OpenCheckpoint", trusted, report: container.IntegrityReport) -> None:
    if trusted is not None:
        verdict = trusted.check(opened.info.directory, report.tensors_digest)
        if not verdict.ok:
            raise signing.SignatureRefused(verdict.message, path=opened.info.path)


def _load_verified(opened: "reader.OpenCheckpoint", trusted=None):
    """One pass: tensor bodies into tensor memory (CRC-32 checked), metadata through SHA-256, then the
    weights-only unpickler over the checked pickle, its storages taken from the tensors already read."""
    import sys
    from torch import _weights_only_unpickler

    directory, f, path = opened.info.directory, opened.file, opened.info.path
    records = directory.records
    byteorder = records.get(f"{container.ARCHIVE}/byteorder")
    if byteorder is not None and container.read_record(f, byteorder).decode("ascii", "replace") != sys.byteorder:
        _check_integrity(opened, trusted)  # rare: let torch swap the bytes
        return _load_open(f, map_location="cpu", mmap=False)
    storages: dict[str, torch.UntypedStorage] = {}

    def into(record: container.Record) -> memoryview:
        memory = torch.empty(record.size, dtype=torch.uint8)
        storages[record.name[len(container.DATA_PREFIX):]] = memory.untyped_storage()
        return memoryview(memory.numpy())

    try:
        report, _ = container.check_and_redigest(f, directory, into=into, hash_tensors=trusted is not None)
    except (container.ContainerError, OSError) as exc:
        raise CorruptCheckpoint(f"damaged checkpoint: {exc}", path=path) from None
    if not report.ok:
        raise CorruptCheckpoint("; ".join(report.problems), path=path)
    _check_signature(opened, trusted, report)
    pickle_record = records.get(f"{container.ARCHIVE}/data.pkl")
    if pickle_record is None:
        raise CorruptCheckpoint("no archive/data.pkl record", path=path)
    # Its CRC-32 sits in the SHA-256-checked directory, so these are the bytes the pass above vouched for.
    data = container.read_record(f, pickle_record)

    def persistent_load(saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] in ("storage", b"storage")):
            raise CorruptCheckpoint(f"unexpected persistent id {saved_id!r:.80}", path=path)
        _, storage_type, key, _location, numel = saved_id
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        storage = storages.get(key.decode("ascii") if isinstance(key, bytes) else str(key))
        if storage is None or not isinstance(numel, int) or storage.nbytes() != numel * torch._utils._element_size(dtype):
            raise CorruptCheckpoint(f"tensor record {key!r:.40} is missing or has the wrong size", path=path)
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    unpickler = _weights_only_unpickler.Unpickler(io.BytesIO(data), encoding="utf-8")
    unpickler.persistent_load = persistent_load
    try:
        return unpickler.load()
    except CorruptCheckpoint:
        raise
    except Exception as exc:  # never echo torch's advice about weights_only=False
        raise CorruptCheckpoint(f"the pickle is refused by the weights-only unpickler "
                                       f"({type(exc).__name__})", path=path) from None


def _load_open(f, *, map_location: Any, mmap: bool):
    """torch.load from an open file; with mmap on Linux through /proc/self/fd, which names the open file itself."""
    fd_path = None
    try:
        fd_path = f"/proc/self/fd/{f.fileno()}"
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    if mmap and fd_path and os.path.exists(fd_path):
        return torch.load(fd_path, map_location=map_location, weights_only=True, mmap=True)
    f.seek(0)
    return torch.load(f, map_location=map_location, weights_only=True)
