"""A static pickle scanner: lists every import and call of a pickle without constructing any object.

Pickles are walked opcode by opcode (the opcode table and argument decoders of ``pickletools``) with a
symbolic stack, never ``pickle.load``: every import (GLOBAL, STACK_GLOBAL, INST) and every call (REDUCE,
NEWOBJ, OBJ, INST) is listed, and ``PickleScan.unsafe`` names those outside ``SAFE_GLOBALS``, the subset of
what torch's weights-only unpickler accepts that plain tensor files need.

It streams in bounded memory, whatever the input: it reads from a file object; arguments longer than
``_SMALL`` bytes (tensor bytes, long strings) are skipped, never held; the symbolic stack, the memo and the
lists of distinct imports and calls are capped. Every cap fails closed: a value the scanner could not keep
(a dropped memo entry, an over-long string) can only make an import unresolvable, and an unresolvable
import is unsafe. This module is the checkpoint layer's: reprotrain's own readers (verify, ls, resume)
check every checkpoint's ``data.pkl`` with it before trusting anything, and the audit layer's classifier
uses it for foreign files. No torch import.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

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


@dataclass
class PickleScan:
    """What a static pass over one pickle found."""

    imports: list[str] = field(default_factory=list)  # distinct module.name of every GLOBAL / STACK_GLOBAL / INST
    calls: list[str] = field(default_factory=list)  # distinct callables of REDUCE / NEWOBJ / OBJ / INST
    end: int = 0  # offset just past STOP (relative to the stream's position at the start, plus ``start``)
    error: str | None = None  # why the scan stopped early (malformed pickle, or a bound exceeded)
    first_value: object = None  # the value of a pickle that is a single integer (the legacy magic number)
    opcodes: int = 0  # how many opcodes were read

    def unsafe(self, extra_allowed: tuple[str, ...] = ()) -> list[str]:
        seen = []
        for name in self.imports + self.calls:
            if name in SAFE_GLOBALS or name.startswith(extra_allowed) or name in seen:
                continue
            seen.append(name)
        return seen


# Bounds of the scanner's own memory (see the module docstring: every one fails closed).
_SMALL = 64 << 10  # arguments longer than this are skipped, not decoded
_LINE = 64 << 10  # longest newline-terminated argument (protocol 0 text opcodes)
_TEXT = 512  # strings longer than this are not kept as text (no module or attribute name is that long)
MAX_STACK = 1 << 20  # symbolic stack entries
MAX_MEMO = 1 << 20  # memo entries kept (only strings and globals are kept at all)
MAX_NAMES = 1000  # distinct imports, distinct calls
MAX_PICKLE = 256 << 20  # bytes of one pickle (safeio.LIMITS["pickle"])


class _Value:
    """A symbolic stack value: a string constant, an imported global, or anything else."""

    __slots__ = ("text", "global_name")

    def __init__(self, text: str | None = None, global_name: str | None = None):
        self.text = text
        self.global_name = global_name


_OTHER = _Value()
_BIG = object()  # an argument that was skipped because it is longer than _SMALL
_MARK = object()
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
               "BINUNICODE8"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_CALL_OPS = {"REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}  # position of the callable below the stack top
_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1), pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
           pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4), pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8)}


class _TooBig(ValueError):
    pass


def _canonical(module: str, name: str) -> str:
    # Python 2 pickles (legacy torch files) name builtins "__builtin__"; unpicklers map them like this.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class _Reader:
    """Exact reads from a file object through a 64 KiB buffer, counting the bytes consumed; it never asks the
    file for more than a chunk at once, whatever a length in the pickle claims.

    The scanner's loop decodes most opcodes straight from ``buf`` (up to ``fast_end()``, how far the buffer may be
    read without passing LIMIT) and keeps ``pos`` in a local; an opcode that does not fit there goes through these
    methods, which hold the exact rules (EOF, limit) for every read."""

    __slots__ = ("f", "limit", "buf", "pos", "base")

    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.limit = f, limit
        self.buf, self.pos, self.base = b"", 0, 0  # base: bytes consumed before buf[0]

    @property
    def count(self) -> int:
        return self.base + self.pos

    def fast_end(self) -> int:
        return min(len(self.buf), self.limit - self.base)

    def _charge(self, n: int) -> None:
        if self.base + self.pos + n > self.limit:
            raise _TooBig(f"pickle is longer than the {self.limit} byte limit")

    def _more(self) -> bool:
        data = self.f.read(_CHUNK)
        if not data:
            return False
        self.base += self.pos
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def byte(self) -> int:
        if self.pos >= len(self.buf) and not self._more():
            raise EOFError("pickle exhausted before seeing STOP")
        self._charge(1)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def exact(self, n: int) -> bytes:
        self._charge(n)
        while len(self.buf) - self.pos < n:
            if not self._more():
                raise EOFError("pickle exhausted before seeing STOP")
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        self._charge(n)
        have = min(n, len(self.buf) - self.pos)
        self.pos += have
        n -= have
        while n:
            data = self.f.read(min(n, 1 << 20))
            if not data:
                raise EOFError("pickle exhausted before seeing STOP")
            n -= len(data)
            self.base += len(data)

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\n", self.pos, self.pos + _LINE)
            if end >= 0:
                return self.exact(end + 1 - self.pos)
            if len(self.buf) - self.pos >= _LINE or not self._more():
                raise ValueError("unterminated or over-long text argument")


_CHUNK = 64 << 10
_FIXED = {"uint1": ("<B", 1), "uint2": ("<H", 2), "int4": ("<i", 4), "uint4": ("<I", 4), "uint8": ("<Q", 8),
          "float8": (">d", 8)}
_TEXT_ARGS = {"unicodestring1", "unicodestring4", "unicodestring8"}
_BYTES_ARGS = {"bytes1", "bytes4", "bytes8"}

# How an opcode's argument is read, and what the symbolic stack does with the opcode (its role).
_NO_ARG, _FIXED_ARG, _PREFIXED_ARG, _OTHER_ARG = range(4)
_AS_TEXT, _AS_BYTES, _AS_OTHER = range(3)
# The first four pop what the opcode consumes and push placeholders (_CALL, _OBJ, _EXT also note a call or import).
(_GENERIC, _CALL, _OBJ, _EXT, _FRAMING, _STOP, _GLOBAL, _INST, _STACK_GLOBAL, _STRING, _GET, _PUT,
 _MEMOIZE) = range(13)
_ROLES = {"PROTO": _FRAMING, "FRAME": _FRAMING, "STOP": _STOP, "GLOBAL": _GLOBAL, "INST": _INST,
          "STACK_GLOBAL": _STACK_GLOBAL, "OBJ": _OBJ, "EXT1": _EXT, "EXT2": _EXT, "EXT4": _EXT, "GET": _GET,
          "BINGET": _GET, "LONG_BINGET": _GET, "PUT": _PUT, "BINPUT": _PUT, "LONG_BINPUT": _PUT,
          "MEMOIZE": _MEMOIZE, **{name: _CALL for name in _CALL_OPS}, **{name: _STRING for name in _STRING_OPS}}
_LONGEST_FAST_HEAD = 9  # an opcode byte and at most 8 bytes of fixed argument or length prefix


class _Spec:
    """Everything the scanner needs of one opcode, looked up once per opcode by its byte."""

    __slots__ = ("opcode", "name", "kind", "fmt", "width", "decode", "reader", "role", "depth", "mark", "count",
                 "pushed")

    def __init__(self, opcode):
        self.opcode, self.name = opcode, opcode.name
        desc = opcode.arg
        self.fmt, self.width, self.decode, self.reader = None, 0, _AS_OTHER, desc.reader if desc else None
        if desc is None:
            self.kind = _NO_ARG
        elif desc.name in _FIXED:
            self.kind = _FIXED_ARG
            self.fmt, self.width = _FIXED[desc.name]
        elif desc.n in _PREFIX:
            self.kind = _PREFIXED_ARG
            self.fmt, self.width = _PREFIX[desc.n]
            self.decode = _AS_TEXT if desc.name in _TEXT_ARGS else _AS_BYTES if desc.name in _BYTES_ARGS else _AS_OTHER
        else:
            self.kind = _OTHER_ARG
        self.role = _ROLES.get(opcode.name, _GENERIC)
        self.depth = _CALL_OPS.get(opcode.name, 0)
        self.mark, self.count, self.pushed = _effect(opcode)


def _read_op(reader: _Reader) -> tuple[_Spec, object]:
    """The opcode at the reader's position and its argument (argument _BIG: longer than _SMALL, skipped), read
    through the reader's exact methods. The common argument types are decoded here, the rare ones by pickletools'
    own readers."""
    code = reader.byte()
    spec = _SPECS[code]
    if spec is None:
        raise ValueError(f"opcode {bytes([code])!r} unknown at byte {reader.count - 1}")
    desc = spec.opcode.arg
    if spec.kind == _NO_ARG:
        arg = None
    elif spec.kind == _FIXED_ARG:
        arg = struct.unpack(spec.fmt, reader.exact(spec.width))[0]
    elif spec.kind == _PREFIXED_ARG:
        prefix = reader.exact(spec.width)
        length = struct.unpack(spec.fmt, prefix)[0]
        if length < 0:
            raise ValueError(f"{spec.name} with negative length {length}")
        if length > _SMALL:
            reader.skip(length)
            arg = _BIG
        elif spec.decode == _AS_TEXT:
            arg = reader.exact(length).decode("utf-8", "surrogatepass")
        elif spec.decode == _AS_BYTES:
            arg = reader.exact(length)
        else:
            arg = desc.reader(io.BytesIO(prefix + reader.exact(length)))
    elif desc.n >= 0:
        arg = desc.reader(io.BytesIO(reader.exact(desc.n)))
    elif desc.n == pickletools.UP_TO_NEWLINE:
        raw = reader.line()
        if desc.name == "stringnl_noescape_pair":
            raw += reader.line()
        arg = desc.reader(io.BytesIO(raw))
    else:  # pragma: no cover - every argument descriptor of pickletools is one of the above
        raise ValueError(f"{spec.name}: argument of unknown form")
    return spec, arg


def _plausible(name: str) -> bool:
    """An import a real unpickler could perform (dotted identifiers), not random bytes read as a GLOBAL."""
    return all(part.isidentifier() for part in name.split("."))


def findings(scan: PickleScan, *, strict: bool, raw_bytes: bool = False, extra_allowed: tuple = ()) -> list[str]:
    """The unsafe imports of SCAN that count, for a stream of unknown type.

    ``strict`` (a ``.pkl`` record, a stream opening with a PROTO opcode): every unsafe import. Otherwise (any
    record, whatever its name: a pickle of protocol 0 or 1 has no marker): an unsafe import that names a real
    attribute (dotted identifiers), or any unsafe import of a complete pickle. ``raw_bytes`` (tensor data,
    which torch never unpickles): only a complete pickle's. Random bytes read as opcodes thus never count.
    """
    unsafe = scan.unsafe(extra_allowed)
    if not unsafe:
        return []
    complete = scan.error is None
    if strict or complete or (not raw_bytes and any(_plausible(name) for name in unsafe)):
        return unsafe
    return []


class Window:
    """A read-only view of SIZE bytes of a file object from its current position (a zip record's body):
    reads never go past its end, whatever a pickle's lengths claim."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""
        self.left -= len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        return read_line(self.read, self.left if limit is None or limit < 0 else min(limit, self.left))


def read_line(read, limit: int) -> bytes:
    """At most ``limit`` bytes up to and including a newline, through ``read(1)``: byte by byte, because not every
    file object's readline takes a limit (fsspec's does not). Pickle lines are rare (protocol 0 text arguments and
    GLOBAL's two names) and short."""
    line = bytearray()
    while len(line) < limit:
        byte = read(1)
        if not byte:
            break
        line += byte
        if byte == b"\n":
            break
    return bytes(line)


def scan_pickle(data, start: int = 0, *, limit: int = MAX_PICKLE) -> PickleScan:
    """Walk one pickle to its STOP with a symbolic stack; never constructs any object.

    DATA is bytes (scanned from offset START) or a binary file object (scanned from its current position;
    START is then only added to ``end``). At most LIMIT bytes are read.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(data)
        stream.seek(start)
    else:
        stream = data
    scan = PickleScan()
    reader = _Reader(stream, limit)
    stack: list = []
    memo: dict = {}
    imports: dict[str, None] = {}
    calls: dict[str, None] = {}
    framing = 0  # PROTO and FRAME: not values
    first = None  # the first generic opcode and its argument
    memoized, puts = 0, False
    specs, unpack_from, fast_head = _SPECS, struct.unpack_from, _LONGEST_FAST_HEAD
    buf, pos, fast_end, opcodes = reader.buf, reader.pos, reader.fast_end(), 0

    def note(names: dict, name: str) -> None:
        if name not in names:
            names[name] = None if len(names) < MAX_NAMES else names.setdefault(f"<more than {MAX_NAMES} globals>")

    try:
        while True:
            # Decode one opcode straight from the buffer when all of it is there and within the limit (the
            # common case: a few bytes); anything else through the reader's exact methods, from the same byte.
            spec = None
            if pos + fast_head <= fast_end:
                spec = specs[buf[pos]]
                if spec is not None:
                    kind = spec.kind
                    if kind == _NO_ARG:
                        arg, pos = None, pos + 1
                    elif kind == _FIXED_ARG:
                        arg, pos = unpack_from(spec.fmt, buf, pos + 1)[0], pos + 1 + spec.width
                    elif kind == _PREFIXED_ARG:
                        body = pos + 1 + spec.width
                        length = unpack_from(spec.fmt, buf, pos + 1)[0]
                        if 0 <= length <= _SMALL and body + length <= fast_end:
                            decode = spec.decode
                            if decode == _AS_TEXT:
                                arg = buf[body:body + length].decode("utf-8", "surrogatepass")
                            elif decode == _AS_BYTES:
                                arg = buf[body:body + length]
                            else:
                                arg = spec.reader(io.BytesIO(buf[pos + 1:body + length]))
                            pos = body + length
                        else:
                            spec = None
                    else:
                        spec = None
            if spec is None:
                reader.pos = pos
                spec, arg = _read_op(reader)
                buf, pos, fast_end = reader.buf, reader.pos, reader.fast_end()
            opcodes += 1
            role = spec.role
            if role <= _EXT:  # the most frequent: pop what the opcode consumes, push placeholders
                if first is None:  # only such an opcode (an integer) can be a one-value pickle's first_value
                    first = (spec.name, arg)
                if role == _CALL:
                    depth = spec.depth
                    callee = stack[-depth] if len(stack) >= depth else _OTHER
                    note(calls, getattr(callee, "global_name", None) or "<computed callable>")
                elif role == _OBJ:
                    mark = _mark_index(stack)
                    callee = stack[mark + 1] if mark + 1 < len(stack) else _OTHER
                    note(calls, getattr(callee, "global_name", None) or "<computed callable>")
                elif role == _EXT:
                    note(imports, f"<copyreg extension {arg}>")
                if spec.mark:
                    _pop_to_mark(stack)
                count = spec.count
                if count:
                    if len(stack) < count or _MARK in stack[-count:]:
                        raise ValueError("stack underflow")
                    del stack[-count:]
                pushed = spec.pushed
                if pushed:
                    stack.extend(pushed)
                    if len(stack) > MAX_STACK:
                        raise _TooBig(f"pickle keeps more than {MAX_STACK} values on its stack")
                continue
            if role == _PUT or role == _MEMOIZE:
                # MEMOIZE stores at len(memo); no pickler mixes it with PUT, and a model of a mixed memo that
                # drifted from the real one could resolve a GET to the wrong (safe-looking) name: refused.
                if role == _MEMOIZE:
                    if puts:
                        raise ValueError("pickle mixes PUT and MEMOIZE")
                    key, memoized = memoized, memoized + 1
                else:
                    if memoized:
                        raise ValueError("pickle mixes PUT and MEMOIZE")
                    key, puts = arg, True
                value = stack[-1] if stack else _OTHER
                if value is not _OTHER and value is not _MARK and len(memo) < MAX_MEMO:
                    memo[key] = value
                else:
                    memo.pop(key, None)  # a later GET of it sees "anything": fails closed
                continue
            if role == _STOP:
                scan.end = start + reader.base + pos
                break
            if role == _FRAMING:
                framing += 1
                continue
            if role == _GLOBAL or role == _INST:
                module, _, attr = str(arg).partition(" ")
                target = _canonical(module, attr)
                note(imports, target)
                if role == _INST:
                    note(calls, target)
                    _pop_to_mark(stack)
                    stack.append(_OTHER)
                else:
                    stack.append(_Value(global_name=target))
                continue
            if role == _STACK_GLOBAL:
                attr, module = _pop(stack), _pop(stack)
                if module.text is None or attr.text is None:
                    target = "<unresolvable STACK_GLOBAL>"
                else:
                    target = _canonical(module.text, attr.text)
                note(imports, target)
                stack.append(_Value(global_name=target))
                continue
            if role == _STRING:
                if arg is _BIG or len(arg) > _TEXT:
                    stack.append(_OTHER)
                else:
                    stack.append(_Value(text=arg.decode("latin-1") if isinstance(arg, bytes) else arg))
            else:  # _GET
                stack.append(memo.get(arg, _OTHER))
            if len(stack) > MAX_STACK:
                raise _TooBig(f"pickle keeps more than {MAX_STACK} values on its stack")
    except _TooBig as exc:
        scan.error = f"pickle too large to scan: {exc}"
    except (ValueError, struct.error, EOFError, IndexError, UnicodeDecodeError, OverflowError) as exc:
        scan.error = f"malformed pickle: {exc}"
    scan.opcodes = opcodes
    scan.imports, scan.calls = list(imports), list(calls)
    values = opcodes - framing - 1  # a complete pickle: every opcode but the framing and STOP
    if not scan.error and values == 1 and first is not None and first[0] in _INT_OPS:
        scan.first_value = first[1]
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


def _effect(opcode) -> tuple[bool, int, tuple]:
    before, after = opcode.stack_before, opcode.stack_after
    mark = pickletools.markobject in before
    count = before.index(pickletools.markobject) if mark else len(before)
    return mark, count, tuple(_MARK if item is pickletools.markobject else _OTHER for item in after)


_SPECS: list = [None] * 256
for _opcode in pickletools.opcodes:
    _SPECS[ord(_opcode.code)] = _Spec(_opcode)
del _opcode
