"""Classify files that are not reprotrain checkpoints, without executing anything in them.

Every pickle found (plain, legacy sequence, zip member, nested archive, tar member) goes through the static
scanner of ``reprotrain.checkpoint.pickle_scan``; a file is refused when it imports anything outside
``SAFE_GLOBALS``. Only a file that passes the scan may be confirmed with ``torch.load(weights_only=True)``,
itself a restricted unpickler: belt and braces.

Exit codes follow `reprotrain verify`: 2 unsafe, broken or not a PyTorch file at all; 3 a readable
PyTorch file that simply carries no reprotrain manifest. Nothing here imports torch except ``_confirm``.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

from reprotrain import safeio
from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.pickle_scan import (LEGACY_MAGIC, LEGACY_PROTOCOL, SAFE_GLOBALS, PickleScan, findings,
                                               read_line, scan_pickle)
from reprotrain.errors import ReprotrainError, escape_control, os_error_message, torch_message

# The largest data.pkl handed to torch's weights-only unpickler for confirmation (a pure-Python unpickler).
_CONFIRM_LIMIT = 8 << 20
# The largest zip central directory read for classification (about 350 000 members).
MAX_ZIP_DIRECTORY = 16 << 20

__all__ = ["Classification", "classify", "classify_bytes", "SAFE_GLOBALS", "PickleScan", "scan_pickle"]


@dataclass(frozen=True)
class Classification:
    """What a non-checkpoint file is: exit code (2 or 3), a category and a one-line reason."""

    exit_code: int
    category: str
    reason: str


def _refusal(where: str, unsafe: list[str]) -> Classification:
    shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
    return Classification(2, "unsafe-pickle", f"unsafe pickle{where}: imports {shown} "
                                              "(not allowed by the weights-only unpickler; nothing was executed)")


class _Stop(Exception):
    """Classification ends early with this verdict (a bound was exceeded)."""

    def __init__(self, verdict: Classification):
        super().__init__(verdict.reason)
        self.verdict = verdict


class _Budget:
    """Bytes that inflating zip members may produce for one file, nested archives included."""

    def __init__(self, limit: int):
        self.limit, self.left = limit, limit

    def charge(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _Stop(Classification(2, "zip-bomb", f"zip members decompress to more than the "
                                                      f"{safeio._human(self.limit)} limit; not inspected further"))


class _Member:
    """A zip member's body as a stream (stored: a window on the file; deflated: inflated in bounded steps),
    with the CRC-32 of everything read through it. Reads never return more than asked or than exists."""

    def __init__(self, f, start: int, size: int, method: int, budget: _Budget):
        self.f, self.start, self.pos, self.end, self.budget = f, start, start, start + size, budget
        self.crc = 0
        self.length = 0
        self._pushback = b""
        self._inflater = zlib.decompressobj(-15) if method == zipfile.ZIP_DEFLATED else None
        self._pending = b""  # compressed input not yet consumed by the inflater

    def _raw(self, n: int) -> bytes:
        n = min(n, self.end - self.pos)
        if n <= 0:
            return b""
        self.f.seek(self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def _produce(self, n: int) -> bytes:
        if self._inflater is None:
            return self._raw(n)
        while True:
            if self._pending:
                out = self._inflater.decompress(self._pending, n)
                self._pending = self._inflater.unconsumed_tail
                if out:
                    self.budget.charge(len(out))
                    return out
            if self._inflater.eof:
                return b""
            chunk = self._raw(1 << 16)
            if not chunk:
                return b""
            self._pending = chunk

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        if self._pushback:
            data, self._pushback = self._pushback[:n], self._pushback[n:]
            return data
        data = self._produce(n)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        return read_line(self.read, 1 << 16 if limit is None or limit < 0 else limit)

    def peek(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.read(n - len(data))
            if not more:
                break
            data += more
        self._pushback = data + self._pushback
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _open_member(f, info: zipfile.ZipInfo, budget: _Budget) -> _Member:
    """A member's body WITHOUT the CRC check up front: a bad CRC must not hide an unsafe pickle from the scan."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"local header of {escape_control(info.filename)} damaged")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise zipfile.BadZipFile(f"member {escape_control(info.filename)} uses unsupported compression "
                                 f"{info.compress_type}")
    return _Member(f, start, info.compress_size, info.compress_type, budget)


def classify(path: str | os.PathLike, *, confirm: bool = True) -> Classification:
    """Classify a file that is not a reprotrain checkpoint (see the module docstring for the exit codes).

    Only a regular file is read (a FIFO, device or directory is refused without reading it), streamed in
    bounded memory whatever its size: see docs/reliability.md, "Read limits". An object-store URL is streamed
    through fsspec under the same size limit.
    """
    location = Location.of(path)
    if not location.is_local:
        try:
            size = location.size()
            if size is None:
                return Classification(2, "unreadable", "cannot read: no such object")
            if size > safeio.LIMITS["foreign"]:
                return Classification(2, "too-large", f"is {safeio._human(size)}, more than the "
                                                      f"{safeio._human(safeio.LIMITS['foreign'])} limit")
            handle = location.open("rb")
        except (OSError, ValueError) as exc:
            return Classification(2, "unreadable", f"cannot read: {os_error_message(exc)}")
        with handle:
            return _classify(handle, size, confirm=confirm, depth=0, budget=_Budget(safeio.LIMITS["decompressed"]))
    try:
        handle = safeio.open_regular(location.path, limit=safeio.LIMITS["foreign"], what="file")
    except ReprotrainError as exc:
        category = "not-regular" if isinstance(exc, (safeio.NotRegular,)) else (
            "too-large" if isinstance(exc, safeio.TooLarge) else "unreadable")
        if isinstance(exc, safeio.Missing):
            return Classification(2, "unreadable", "no such file")
        return Classification(2, category, exc.message.removeprefix("cannot read file: ").removeprefix("file "))
    with handle:
        size = os.fstat(handle.fileno()).st_size
        return _classify(handle, size, confirm=confirm, depth=0, budget=_Budget(safeio.LIMITS["decompressed"]))


def classify_bytes(data: bytes, *, confirm: bool = True, source: str = "<bytes>", depth: int = 0) -> Classification:
    return _classify(io.BytesIO(data), len(data), confirm=confirm, depth=depth,
                     budget=_Budget(safeio.LIMITS["decompressed"]))


def _classify(f, size: int, *, confirm: bool, depth: int, budget: _Budget) -> Classification:
    try:
        if size == 0:
            return Classification(2, "empty", "empty file (0 bytes)")
        f.seek(0)
        head = f.read(262)
        f.seek(0)
        if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
            return _classify_zip(f, size, confirm, depth, budget)
        if len(head) >= 262 and head[257:262] == b"ustar":
            return _classify_tar(f)
        return _classify_pickles(f, size, head, confirm)
    except _Stop as stop:
        return stop.verdict
    except safeio.TooLarge as exc:
        return Classification(2, "too-large", exc.message)
    except OSError as exc:
        return Classification(2, "unreadable", f"cannot read: {exc.strerror or exc}")


def _classify_pickles(f, size: int, head: bytes, confirm: bool) -> Classification:
    first = scan_pickle(f, limit=safeio.LIMITS["pickle"])
    unsafe = first.unsafe()
    if unsafe:
        return _refusal("", unsafe)
    if first.error:
        if size <= 4:
            return Classification(2, "truncated", f"only {size} bytes: too short for any PyTorch format")
        if first.opcodes < 3 and head[0] != 0x80:  # junk often decodes as one or two opcodes before failing
            return Classification(2, "not-pytorch", f"not a PyTorch file (starts with {bytes(head[:8])!r}: "
                                                    "neither a zip archive nor a pickle)")
        return Classification(2, "malformed-pickle", f"{first.error}")
    if first.first_value != LEGACY_MAGIC:
        return Classification(2, "plain-pickle", "a Python pickle, not a PyTorch file (no legacy magic number, "
                                                 "not a zip archive)")
    # Legacy layout: magic, protocol version, sys_info, the object, the storage keys, then raw storage bytes.
    offset = first.end
    scans = [first]
    for part in ("protocol version", "system info", "object", "storage keys"):
        f.seek(offset)
        scan = scan_pickle(f, offset, limit=safeio.LIMITS["pickle"])
        unsafe = scan.unsafe()
        if unsafe:
            return _refusal(f" (legacy {part})", unsafe)
        if scan.error:
            return Classification(2, "corrupt-legacy", f"legacy PyTorch file is damaged in its {part} pickle "
                                                       f"({scan.error})")
        scans.append(scan)
        offset = scan.end
    if scans[1].first_value != LEGACY_PROTOCOL:
        return Classification(2, "corrupt-legacy", f"legacy PyTorch file with unknown protocol version "
                                                   f"{scans[1].first_value!r}")
    return _confirmed(f, size, confirm, "pytorch-legacy", "legacy format, torch < 1.6")


_ARCHIVE_SUFFIXES = (".pth", ".pt", ".bin", ".zip", ".ckpt", ".tar")


def _classify_zip(f, size: int, confirm: bool, depth: int, budget: _Budget) -> Classification:
    try:
        end = zipfile._EndRecData(f)
        if end is not None and end[zipfile._ECD_SIZE] > MAX_ZIP_DIRECTORY:
            return Classification(2, "too-large", f"zip directory of {end[zipfile._ECD_SIZE]} bytes, larger than "
                                                  f"the {safeio._human(MAX_ZIP_DIRECTORY)} limit")
        f.seek(0)
        archive = zipfile.ZipFile(f)
        infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        return Classification(2, "corrupt-zip", f"damaged zip archive: {escape_control(str(exc))[:200]}")
    names = [info.filename for info in infos]
    torchscript = any(name.endswith("/constants.pkl") or "/code/" in name for name in names)
    allowed_extra = ("__torch__.", "torch.jit._pickle.") if torchscript else ()
    bad_crc = []
    nested_torch = []
    for info in infos:
        shown = escape_control(info.filename)
        try:
            member = _open_member(f, info, budget)
            head = member.peek(262)
            storage = info.filename.split("/")[-2:-1] == ["data"]  # <folder>/data/<key>: raw tensor bytes
            archive_like = head[:4] == b"PK\x03\x04" or (len(head) >= 262 and head[257:262] == b"ustar")
            if archive_like and not storage:
                if depth + 1 > safeio.MAX_NESTING:
                    return Classification(2, "nested-too-deep", f"{shown}: archives nested more than "
                                                                f"{safeio.MAX_NESTING} deep; not inspected")
                nested = _classify_nested(f, info, member, depth, budget)
                if nested.exit_code == 2 and nested.category in ("unsafe-pickle", "zip-bomb", "nested-too-deep",
                                                                 "too-large"):
                    return Classification(2, nested.category, f"{shown}: {nested.reason}")
                if nested.exit_code == 3 and info.filename.endswith(_ARCHIVE_SUFFIXES):
                    nested_torch.append(shown)
            else:
                verdict = _scan_member(member, info, head, storage, allowed_extra)
                if verdict is not None:
                    return verdict
            member.drain()
            if member.crc != info.CRC or member.length != info.file_size:
                bad_crc.append(shown)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            return Classification(2, "corrupt-zip", f"damaged zip archive: {escape_control(str(exc))[:200]}")
    if bad_crc:
        return Classification(2, "corrupt-zip", f"zip member {bad_crc[0]} fails its CRC-32 check")
    data_pkl = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if torchscript:
        return Classification(3, "torchscript", "TorchScript archive (torch.jit.save), not a reprotrain checkpoint; "
                                                "not loaded (it holds code)")
    if data_pkl:
        # torch's weights-only unpickler is pure Python: a pickle of millions of opcodes would take minutes, so
        # only pickles up to _CONFIRM_LIMIT are confirmed (the static scan has already passed them all).
        small = all(info.file_size <= _CONFIRM_LIMIT for info in infos if info.filename in data_pkl)
        return _confirmed(f, size, confirm and depth == 0 and small, "pytorch-zip", "zip format")
    if nested_torch:
        shown = ", ".join(nested_torch)
        return Classification(3, "zip-of-pytorch-files", f"zip archive holding PyTorch files ({shown}), e.g. a "
                                                         "Stable-Baselines3 model; no reprotrain manifest")
    if "data.pkl" in names:
        return Classification(2, "not-pytorch", "zip archive with data.pkl at its root: torch.save always writes "
                                                "it inside a folder")
    return Classification(2, "not-pytorch", f"zip archive without PyTorch content ({len(names)} members, "
                                            "no */data.pkl)")


def _scan_member(member: _Member, info: zipfile.ZipInfo, head: bytes, storage: bool,
                 allowed_extra: tuple) -> Classification | None:
    """Scan one member as a pickle, whatever its name; the refusal, or None.

    Which findings count: in a ``.pkl`` member or one that opens with a PROTO opcode, any unsafe import; in
    any other member, an unsafe import that names a real module attribute (dotted identifiers), or any unsafe
    import of a complete pickle; in a tensor record (``<folder>/data/<key>``, raw bytes torch never
    unpickles), only a complete pickle's. Random tensor bytes read as opcodes thus never count.
    """
    name = info.filename
    proto = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if storage and not proto:
        return None
    scan = scan_pickle(member, limit=safeio.LIMITS["pickle"])
    unsafe = findings(scan, strict=name.endswith(".pkl") or (proto and not storage), raw_bytes=storage,
                      extra_allowed=allowed_extra)
    if unsafe:
        return _refusal(f" in {escape_control(name)}", unsafe)
    if scan.error and name.endswith(".pkl"):
        return Classification(2, "corrupt-zip", f"{escape_control(name)}: {scan.error}")
    return None


def _classify_nested(f, info: zipfile.ZipInfo, member: _Member, depth: int, budget: _Budget) -> Classification:
    """Classify an archive stored in a zip member: a seekable view of a stored one, a spooled copy of a deflated
    one (its inflated bytes count against the budget)."""
    if info.compress_type == zipfile.ZIP_STORED:
        view = _View(f, member.start, info.compress_size)
        return _classify(view, info.compress_size, confirm=False, depth=depth + 1, budget=budget)
    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spool:
        while True:
            chunk = member.read(1 << 20)
            if not chunk:
                break
            spool.write(chunk)
        length = spool.tell()
        spool.seek(0)
        return _classify(spool, length, confirm=False, depth=depth + 1, budget=budget)


class _View:
    """A seekable read-only view of SIZE bytes of F from START (a stored member, for a nested archive)."""

    def __init__(self, f, start: int, size: int):
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.pos)
        n = left if n is None or n < 0 else min(n, left)
        if not n:
            return b""
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        return read_line(self.read, 1 << 16 if limit is None or limit < 0 else limit)


def _classify_tar(f) -> Classification:
    try:
        archive = tarfile.open(fileobj=f, mode="r:")
        members = {}
        for count, member in enumerate(archive):
            if count >= 1000:
                return Classification(2, "not-pytorch", "tar archive with more than 1000 members: not a PyTorch file")
            members[member.name] = member
        if not {"sys_info", "pickle", "storages"} <= set(members):
            return Classification(2, "not-pytorch", "tar archive that is not a PyTorch file "
                                                    "(no sys_info, pickle and storages members)")
        for name in ("sys_info", "pickle", "storages"):
            if not members[name].isfile():
                return Classification(2, "corrupt-tar", f"tar member {name} is not a file")
            body = archive.extractfile(members[name])
            # Only the leading pickles of `storages` are pickles; raw storage bytes follow them.
            scan = scan_pickle(body, limit=safeio.LIMITS["pickle"])
            unsafe = scan.unsafe()
            if unsafe:
                return _refusal(f" in tar member {name}", unsafe)
            if scan.error and name != "storages":
                return Classification(2, "corrupt-tar", f"tar member {name}: {scan.error}")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        return Classification(2, "corrupt-tar", f"damaged tar archive: {escape_control(str(exc))[:200]}")
    return Classification(3, "pytorch-tar", "PyTorch file in the tar format of torch < 0.1.10 without a reprotrain "
                                            "manifest (torch cannot load it with weights_only=True)")


def _confirm(f, size: int, category: str) -> tuple[bool, str] | None:
    """Let torch's weights-only unpickler load the (already statically safe) file from the open file object.

    Tensors go to the meta device: torch reads the pickle and the layout, never the storage bytes, so memory
    stays bounded whatever the file's size (a legacy file, which torch reads whole, is loaded only up to the
    pickle limit). None when it loads; else (damaged, one-line detail): damaged is False when only the
    restricted unpickler's own limits refused it (e.g. opcodes of pickle protocols it does not implement).
    """
    import warnings

    import torch

    if category == "pytorch-legacy" and size > safeio.LIMITS["pickle"]:
        return None
    try:
        f.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about non-default pickle protocols; the verdict says it
            torch.load(f, weights_only=True, map_location="meta")
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding we report
        weights_only = "WeightsUnpickler error:" in str(exc)
        return not weights_only, torch_message(exc)
    return None


def _confirmed(f, size: int, confirm: bool, category: str, what: str) -> Classification:
    """Exit 3 for a readable PyTorch file; exit 2 when torch finds it damaged."""
    reason = f"readable PyTorch file without a reprotrain manifest ({what})"
    outcome = _confirm(f, size, category) if confirm else None
    if outcome is None:
        return Classification(3, category, reason)
    damaged, detail = outcome
    if damaged:
        return Classification(2, f"corrupt-{category.split('-')[-1]}", f"{what} PyTorch file that torch cannot "
                                                                      f"load: {detail}")
    return Classification(3, category, f"{reason}; statically safe, but torch.load(weights_only=True) refuses it "
                                       f"({detail})")
