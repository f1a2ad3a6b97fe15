"""Classify files that are not reprotrain checkpoints, without executing anything in them.

Pickles are scanned statically with ``pickletools.genops`` and a symbolic stack (never ``pickle.load``):
every import (GLOBAL, STACK_GLOBAL, INST) and every call (REDUCE, NEWOBJ, OBJ, INST) is listed, and a
file is refused when it imports anything outside ``SAFE_GLOBALS``, the subset of what torch's
weights-only unpickler accepts that plain tensor files need. Only a file that passes the scan may be
confirmed with ``torch.load(weights_only=True)``, itself a restricted unpickler: belt and braces.

Exit codes follow `reprotrain verify`: 2 unsafe, broken or not a PyTorch file at all; 3 a readable
PyTorch file that simply carries no reprotrain manifest. Nothing here imports torch except ``_confirm``.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickletools
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field

# The magic number that opens every legacy (torch < 1.6) file: its first pickle is this integer.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_DTYPES = ("float16", "float32", "float64", "bfloat16", "complex32", "complex64", "complex128", "uint8", "int8",
           "int16", "int32", "int64", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
           "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
           "float4_e2m1fn_x2", "uint16", "uint32", "uint64", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2")
_STORAGES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexFloat",
             "ComplexDouble", "QInt8", "QUInt8", "QInt32", "QUInt4x2", "QUInt2x4")
_REBUILDS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
             "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
             "_rebuild_nested_tensor", "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass",
             "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_device_tensor_from_numpy")

# Every name is one torch's weights-only unpickler also allows (a test checks it against the installed torch).
# Deliberately not "torch.*": torch itself holds gadgets (collect_env.run, _inductor codecache, serialization.load).
SAFE_GLOBALS = frozenset(
    ["collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter",
     "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device", "_codecs.encode",
     "builtins.bytearray", "builtins.set", "builtins.complex", "torch._tensor._rebuild_from_type_v2",
     "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
     "torch.per_tensor_affine", "torch.per_tensor_symmetric", "torch.per_channel_affine",
     "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams"]
    + [f"torch.{name}" for name in _DTYPES]
    + [f"torch.{name}Storage" for name in _STORAGES]
    + [f"torch._utils.{name}" for name in _REBUILDS]
)


@dataclass(frozen=True)
class Classification:
    """What a non-checkpoint file is: exit code (2 or 3), a category and a one-line reason."""

    exit_code: int
    category: str
    reason: str


@dataclass
class PickleScan:
    """What a static pass over one pickle found."""

    imports: list[str] = field(default_factory=list)  # module.name of every GLOBAL / STACK_GLOBAL / INST
    calls: list[str] = field(default_factory=list)  # what REDUCE / NEWOBJ / OBJ / INST would call
    end: int = 0  # offset just past STOP
    error: str | None = None  # why the scan stopped early (malformed pickle)
    first_value: object = None  # the value of a pickle that is a single integer (the legacy magic number)
    opcodes: int = 0  # how many opcodes were read

    def unsafe(self, extra_allowed: tuple[str, ...] = ()) -> list[str]:
        seen = []
        for name in self.imports + self.calls:
            if name in SAFE_GLOBALS or name.startswith(extra_allowed) or name in seen:
                continue
            seen.append(name)
        return seen


class _Value:
    """A symbolic stack value: a string constant, an imported global, or anything else."""

    __slots__ = ("text", "global_name")

    def __init__(self, text: str | None = None, global_name: str | None = None):
        self.text = text
        self.global_name = global_name


_OTHER = _Value()
_MARK = object()
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
               "BINUNICODE8"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_CALL_OPS = {"REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}  # position of the callable below the stack top


def _canonical(module: str, name: str) -> str:
    # Python 2 pickles (legacy torch files) name builtins "__builtin__"; unpicklers map them like this.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def scan_pickle(data: bytes | memoryview, start: int = 0) -> PickleScan:
    """Walk one pickle from START to its STOP with a symbolic stack; never constructs any object."""
    scan = PickleScan()
    stream = io.BytesIO(data)
    stream.seek(start)
    stack: list = []
    memo: dict = {}
    ops = []
    try:
        for opcode, arg, pos in pickletools.genops(stream):
            ops.append((opcode.name, arg))
            name = opcode.name
            if name == "STOP":
                scan.end = stream.tell()
                break
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                target = _canonical(module, attr)
                scan.imports.append(target)
                if name == "INST":
                    scan.calls.append(target)
                    _pop_to_mark(stack)
                    stack.append(_OTHER)
                else:
                    stack.append(_Value(global_name=target))
                continue
            if name == "STACK_GLOBAL":
                attr, module = _pop(stack), _pop(stack)
                if module.text is None or attr.text is None:
                    target = "<unresolvable STACK_GLOBAL>"
                else:
                    target = _canonical(module.text, attr.text)
                scan.imports.append(target)
                stack.append(_Value(global_name=target))
                continue
            if name in _CALL_OPS:
                depth = _CALL_OPS[name]
                callee = stack[-depth] if len(stack) >= depth else _OTHER
                scan.calls.append(callee.global_name or "<computed callable>")
            elif name == "OBJ":
                mark = _mark_index(stack)
                callee = stack[mark + 1] if mark + 1 < len(stack) else _OTHER
                scan.calls.append(callee.global_name or "<computed callable>")
            elif name.startswith("EXT"):
                scan.imports.append(f"<copyreg extension {arg}>")
            if name in _STRING_OPS:
                value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
                stack.append(_Value(text=value))
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _OTHER))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else _OTHER
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else _OTHER
            else:
                _apply_generic(opcode, stack)
        else:
            scan.error = "pickle ends without a STOP opcode"
    except (ValueError, struct.error, EOFError, IndexError) as exc:
        scan.error = f"malformed pickle: {exc}"
    scan.opcodes = len(ops)
    values = [(op, a) for op, a in ops if op not in ("PROTO", "FRAME", "STOP")]
    if not scan.error and len(values) == 1 and values[0][0] in _INT_OPS:
        scan.first_value = values[0][1]
    return scan


def _pop(stack: list) -> _Value:
    if not stack or stack[-1] is _MARK:
        raise ValueError("stack underflow")
    return stack.pop()


def _mark_index(stack: list) -> int:
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] is _MARK:
            return index
    raise ValueError("no MARK on the stack")


def _pop_to_mark(stack: list) -> None:
    del stack[_mark_index(stack):]


def _apply_generic(opcode, stack: list) -> None:
    """Pop what OPCODE consumes and push placeholders for what it produces (pickletools describes both)."""
    before, after = opcode.stack_before, opcode.stack_after
    if pickletools.markobject in before:
        _pop_to_mark(stack)
        for _ in range(before.index(pickletools.markobject)):
            _pop(stack)
    else:
        for _ in before:
            _pop(stack)
    for item in after:
        stack.append(_MARK if item is pickletools.markobject else _OTHER)


def _refusal(where: str, unsafe: list[str]) -> Classification:
    shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
    return Classification(2, "unsafe-pickle", f"unsafe pickle{where}: imports {shown} "
                                              "(not allowed by the weights-only unpickler; nothing was executed)")


def classify(path: str | os.PathLike, *, confirm: bool = True) -> Classification:
    """Classify a file that is not a reprotrain checkpoint (see the module docstring for the exit codes)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except IsADirectoryError:
        return Classification(2, "unreadable", "is a directory, not a checkpoint file")
    except OSError as exc:
        return Classification(2, "unreadable", f"cannot read: {exc.strerror or exc}")
    return classify_bytes(data, confirm=confirm, source=os.fspath(path))


def classify_bytes(data: bytes, *, confirm: bool = True, source: str = "<bytes>", depth: int = 0) -> Classification:
    if not data:
        return Classification(2, "empty", "empty file (0 bytes)")
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return _classify_zip(data, confirm, source, depth)
    if len(data) >= 262 and data[257:262] == b"ustar":
        return _classify_tar(data)
    return _classify_pickles(data, confirm, source)


def _classify_pickles(data: bytes, confirm: bool, source: str) -> Classification:
    first = scan_pickle(data)
    unsafe = first.unsafe()
    if unsafe:
        return _refusal("", unsafe)
    if first.error:
        if len(data) <= 4:
            return Classification(2, "truncated", f"only {len(data)} bytes: too short for any PyTorch format")
        if first.opcodes < 3 and data[0] != 0x80:  # junk often decodes as one or two opcodes before failing
            return Classification(2, "not-pytorch", f"not a PyTorch file (starts with {bytes(data[:8])!r}: "
                                                    "neither a zip archive nor a pickle)")
        return Classification(2, "malformed-pickle", f"{first.error}")
    if first.first_value != LEGACY_MAGIC:
        return Classification(2, "plain-pickle", "a Python pickle, not a PyTorch file (no legacy magic number, "
                                                 "not a zip archive)")
    # Legacy layout: magic, protocol version, sys_info, the object, the storage keys, then raw storage bytes.
    offset = first.end
    scans = [first]
    for part in ("protocol version", "system info", "object", "storage keys"):
        scan = scan_pickle(data, offset)
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
    return _confirmed(data, confirm, "pytorch-legacy", "legacy format, torch < 1.6")


def _zip_member(data: bytes, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes WITHOUT the CRC check: a bad CRC must not hide an unsafe pickle from the scan."""
    header = data[info.header_offset: info.header_offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"local header of {info.filename} damaged")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    body = data[start: start + info.compress_size]
    if len(body) != info.compress_size:
        raise zipfile.BadZipFile(f"member {info.filename} is truncated")
    if info.compress_type == zipfile.ZIP_STORED:
        return body
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return zlib.decompressobj(-15).decompress(body, 1 << 31)
    raise zipfile.BadZipFile(f"member {info.filename} uses unsupported compression {info.compress_type}")


def _classify_zip(data: bytes, confirm: bool, source: str, depth: int) -> Classification:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return Classification(2, "corrupt-zip", f"damaged zip archive: {exc}")
    names = [info.filename for info in infos]
    pickles = [info for info in infos if info.filename.endswith(".pkl")]
    torchscript = any(name.endswith("/constants.pkl") or "/code/" in name for name in names)
    allowed_extra = ("__torch__.", "torch.jit._pickle.") if torchscript else ()
    bad_crc = []
    for info in infos:
        try:
            body = _zip_member(data, archive, info)
        except (zipfile.BadZipFile, zlib.error) as exc:
            return Classification(2, "corrupt-zip", f"damaged zip archive: {exc}")
        if zlib.crc32(body) != info.CRC:
            bad_crc.append(info.filename)
        if info in pickles or (body[:1] == b"\x80" and not info.filename.split("/")[-1].isdigit()
                               and "/data/" not in f"/{info.filename}"):
            scan = scan_pickle(body)
            unsafe = scan.unsafe(allowed_extra)
            if unsafe:
                return _refusal(f" in {info.filename}", unsafe)
            if scan.error and info in pickles:
                return Classification(2, "corrupt-zip", f"{info.filename}: {scan.error}")
        elif (body[:4] == b"PK\x03\x04" or body[:1] == b"\x80") and depth < 2:
            nested = classify_bytes(body, confirm=confirm, source=f"{source}::{info.filename}", depth=depth + 1)
            if nested.exit_code == 2 and nested.category == "unsafe-pickle":
                return Classification(2, "unsafe-pickle", f"{info.filename}: {nested.reason}")
    if bad_crc:
        return Classification(2, "corrupt-zip", f"zip member {bad_crc[0]} fails its CRC-32 check")
    data_pkl = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if torchscript:
        return Classification(3, "torchscript", "TorchScript archive (torch.jit.save), not a reprotrain checkpoint; "
                                                "not loaded (it holds code)")
    if data_pkl:
        return _confirmed(data, confirm, "pytorch-zip", "zip format")
    nested_torch = []
    for info in infos:
        if info.filename.endswith((".pth", ".pt", ".bin")) and depth < 2:
            nested = classify_bytes(_zip_member(data, archive, info), confirm=confirm,
                                    source=f"{source}::{info.filename}", depth=depth + 1)
            if nested.exit_code == 3:
                nested_torch.append(info.filename)
    if nested_torch:
        shown = ", ".join(nested_torch)
        return Classification(3, "zip-of-pytorch-files", f"zip archive holding PyTorch files ({shown}), e.g. a "
                                                         "Stable-Baselines3 model; no reprotrain manifest")
    if "data.pkl" in names:
        return Classification(2, "not-pytorch", "zip archive with data.pkl at its root: torch.save always writes "
                                                "it inside a folder")
    return Classification(2, "not-pytorch", f"zip archive without PyTorch content ({len(names)} members, "
                                            "no */data.pkl)")


def _classify_tar(data: bytes) -> Classification:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        members = {m.name: m for m in archive.getmembers()}
        if not {"sys_info", "pickle", "storages"} <= set(members):
            return Classification(2, "not-pytorch", "tar archive that is not a PyTorch file "
                                                    "(no sys_info, pickle and storages members)")
        for name in ("sys_info", "pickle", "storages"):
            body = archive.extractfile(members[name]).read()
            # Only the leading pickles of `storages` are pickles; raw storage bytes follow them.
            scan = scan_pickle(body)
            unsafe = scan.unsafe()
            if unsafe:
                return _refusal(f" in tar member {name}", unsafe)
            if scan.error and name != "storages":
                return Classification(2, "corrupt-tar", f"tar member {name}: {scan.error}")
    except (tarfile.TarError, OSError) as exc:
        return Classification(2, "corrupt-tar", f"damaged tar archive: {exc}")
    return Classification(3, "pytorch-tar", "PyTorch file in the tar format of torch < 0.1.10 without a reprotrain "
                                            "manifest (torch cannot load it with weights_only=True)")


def _confirm(data: bytes) -> tuple[bool, str] | None:
    """Let torch's weights-only unpickler load the (already statically safe) bytes.

    None when it loads; else (damaged, one-line detail): damaged is False when only the restricted
    unpickler's own limits refused it (e.g. opcodes of pickle protocols it does not implement).
    """
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about non-default pickle protocols; the verdict says it
            torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding we report
        text = str(exc)
        if "WeightsUnpickler error:" in text:
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0].strip()
            return False, detail
        return True, (text.strip().splitlines() or [type(exc).__name__])[0][:300]
    return None


def _confirmed(data: bytes, confirm: bool, category: str, what: str) -> Classification:
    """Exit 3 for a readable PyTorch file; exit 2 when torch finds it damaged."""
    reason = f"readable PyTorch file without a reprotrain manifest ({what})"
    outcome = _confirm(data) if confirm else None
    if outcome is None:
        return Classification(3, category, reason)
    damaged, detail = outcome
    if damaged:
        return Classification(2, f"corrupt-{category.split('-')[-1]}", f"{what} PyTorch file that torch cannot "
                                                                      f"load: {detail}")
    return Classification(3, category, f"{reason}; statically safe, but torch.load(weights_only=True) refuses it "
                                       f"({detail})")
