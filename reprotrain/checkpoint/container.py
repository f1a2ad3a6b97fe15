"""The checkpoint container: a PyTorch-compatible zip archive with an integrity trailer.

The layout is the one ``torch.save`` writes (``archive/data.pkl`` plus one ``archive/data/<key>``
record per storage), so ``torch.load(path, weights_only=True)`` reads it without reprotrain.
reprotrain adds:

* ``archive/reprotrain/manifest.json``: the manifest, readable through the zip directory
  without touching tensor data (and without importing torch);
* the zip comment, ``reprotrain-integrity/1 sha256:<hex>``: a SHA-256 over every byte of the file
  except the bodies of ``data/*`` records, whose CRC-32s (in that hashed region) cover them.

Why that split (docs/checkpoint-format.md has the figures): SHA-256 runs at ~0.37 GiB/s here and
would dominate a save; CRC-32 runs at ~2.9 GiB/s, detects every error burst of up to 32 bits, is what
the zip format needs anyway, and is computed on a second core while the first one writes. Metadata
(pickle, manifest, headers, directory) is small and gets the cryptographic hash.

This module knows nothing about torch: it writes byte buffers and reads them back.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

try:  # zlib-ng's CRC-32 is the same function, 3-4x faster (SIMD); plain zlib is the fallback
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - depends on the platform's wheels
    from zlib import crc32

ARCHIVE = "archive"
MANIFEST_RECORD = f"{ARCHIVE}/reprotrain/manifest.json"
DATA_PREFIX = f"{ARCHIVE}/data/"
TRAILER_PREFIX = b"reprotrain-integrity/1 sha256:"
UNSIGNED_COMMENT_LEN = len(TRAILER_PREFIX) + 64  # 94
SIGNATURE_PREFIX = b"reprotrain-signature/2 ed25519 key="  # format 1: the same with "/1" (read, never written)
SIGNATURE_VERSIONS = (1, 2)
# "reprotrain-signature/1 ed25519 key=<16 hex> time=<YYYY-MM-DDTHH:MM:SSZ> sig=<128 hex>"
SIGNATURE_LINE_LEN = len(SIGNATURE_PREFIX) + 16 + len(b" time=") + 20 + len(b" sig=") + 128  # 210
SIGNED_COMMENT_LEN = UNSIGNED_COMMENT_LEN + 1 + SIGNATURE_LINE_LEN  # 305: trailer, "\n", signature line
ALIGNMENT = 64  # torch aligns storages to 64 bytes so that mmap'd tensors are aligned
CHUNK = 16 << 20
# Reading into tensor memory overlaps the CRC-32 of one chunk with the read of the next: smaller chunks than
# the writer's, so that a tensor of a few MiB already runs on two cores.
READ_CHUNK = 4 << 20
_GATHER = 256 << 10  # small writes are gathered up to this size (ContainerWriter)

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOC64 = struct.Struct("<IIQI")
_SIG_LOCAL, _SIG_CENTRAL, _SIG_EOCD = 0x04034B50, 0x02014B50, 0x06054B50
_SIG_EOCD64, _SIG_LOC64, _SIG_DESCRIPTOR = 0x06064B50, 0x07064B50, 0x08074B50
_FLAGS = 0x0008 | 0x0800  # sizes/CRC in a data descriptor; UTF-8 names
_PAD_ID = 0x5254  # extra-field id of the alignment padding ("RT")
_ZIP64_ID = 0x0001
_U32 = 0xFFFFFFFF


class ContainerError(Exception):
    """The file is not a well-formed container (reason in the message)."""


class NotAContainer(ContainerError):
    """The file is a readable zip (or not a zip at all) but carries no reprotrain trailer."""


@dataclass(frozen=True)
class SignatureLine:
    """The parsed signature line of a signed container (docs/checkpoint-format.md, "Signature")."""

    key_id: str  # 16 lowercase hex digits
    time: str  # YYYY-MM-DDTHH:MM:SSZ
    signature: bytes  # 64 bytes
    version: int = 2  # 2 signs the tensors' SHA-256 too; 1 signed the integrity digest only

    def encode(self) -> bytes:
        line = (_signature_prefix(self.version) + self.key_id.encode("ascii") + b" time=" + self.time.encode("ascii")
                + b" sig=" + self.signature.hex().encode("ascii"))
        if len(line) != SIGNATURE_LINE_LEN:
            raise ValueError("signature line has the wrong length")
        return line


_HEX = frozenset(b"0123456789abcdef")


def _signature_prefix(version: int) -> bytes:
    return SIGNATURE_PREFIX.replace(b"/2 ", f"/{version} ".encode("ascii"))


def parse_signature_line(line: bytes) -> SignatureLine:
    """Parse the second comment line; ContainerError if it is not exactly the documented form."""
    version = next((v for v in SIGNATURE_VERSIONS if line.startswith(_signature_prefix(v))), None)
    if len(line) != SIGNATURE_LINE_LEN or version is None:
        raise ContainerError("signature line is damaged")
    rest = line[len(SIGNATURE_PREFIX):]
    key_id, time_part, sig_part = rest[:16], rest[16:42], rest[42:]
    if (not set(key_id) <= _HEX or not time_part.startswith(b" time=") or not sig_part.startswith(b" sig=")
            or not set(sig_part[5:]) <= _HEX):
        raise ContainerError("signature line is damaged")
    when = time_part[6:].decode("ascii", "replace")
    if len(when) != 20 or when[4] != "-" or when[10] != "T" or not when.endswith("Z"):
        raise ContainerError("signature line is damaged")
    return SignatureLine(key_id.decode("ascii"), when, bytes.fromhex(sig_part[5:].decode("ascii")), version)


@dataclass(frozen=True)
class Record:
    name: str
    header_offset: int
    data_offset: int
    size: int  # bytes of the body on disk (the record's size: checkpoints store records uncompressed)
    crc32: int
    method: int = 0  # zip compression method (0 stored); other zips read through here may compress


# --------------------------------------------------------------------------- writing


class ContainerWriter:
    """Streams records into a file object and closes the archive with the integrity trailer.

    ``force_zip64`` writes ZIP64 structures even for small files (tests use it to cover the
    >4 GiB path without writing 4 GiB). ``hash_tensors``: also a SHA-256 over every tensor body in file order
    (`tensors_digest`, what a signature binds), computed on the CRC-32 thread.
    """

    def __init__(self, fileobj: BinaryIO, *, force_zip64: bool = False, hash_tensors: bool = False):
        self._f = fileobj
        self._offset = 0
        self._meta_hash = hashlib.sha256()
        self._entries: list[tuple[str, int, int, int, bool, int]] = []  # name, offset, size, crc, zip64, body offset
        self.directory: Directory | None = None  # after close(): what read_directory would read back
        self._force_zip64 = force_zip64
        self._tensor_hash = hashlib.sha256() if hash_tensors else None
        # Started only for a record of more than one chunk: there is nothing to overlap below that, and a
        # thread start per save is a fixed cost that dominates small checkpoints.
        self._crc_pool: "ThreadPoolExecutor | None" = None
        # Headers, descriptors, directory entries and small bodies are gathered into one write of up to
        # _GATHER bytes (a state of hundreds of small tensors is otherwise thousands of tiny writes).
        self._pending = bytearray()

    def _emit(self, data, *, hashed: bool) -> None:
        size = memoryview(data).nbytes
        if hashed:
            self._meta_hash.update(data)
        if size < _GATHER:
            self._pending += data
            if len(self._pending) >= _GATHER:
                self._flush()
        else:
            self._flush()
            self._write_all(data)
        self._offset += size

    def _flush(self) -> None:
        if self._pending:
            self._write_all(self._pending)
            self._pending = bytearray()

    def _write_all(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = self._f.write(view)
            if written is None:  # raw file objects may write less; buffered ones return the length
                written = len(view)
            view = view[written:]

    def _local_header(self, name: bytes, size: int, zip64: bool) -> bytes:
        extra = b""
        if zip64:
            extra = struct.pack("<HHQQ", _ZIP64_ID, 16, 0, 0)
        # Pad the header so that the body starts on an ALIGNMENT boundary.
        body_start = self._offset + _LOCAL.size + len(name) + len(extra)
        pad = (-body_start) % ALIGNMENT
        if pad:
            if pad < 4:
                pad += ALIGNMENT
            extra += struct.pack("<HH", _PAD_ID, pad - 4) + b"\0" * (pad - 4)
        header = _LOCAL.pack(_SIG_LOCAL, 45 if zip64 else 20, _FLAGS, 0, 0, 0x21,
                             0, _U32 if zip64 else 0, _U32 if zip64 else 0, len(name), len(extra))
        return header + name + extra

    def write_record(self, name: str, data, *, crc_in_background: bool = False) -> None:
        """Write one stored record. ``data`` is bytes-like (a memoryview over tensor memory is not copied)."""
        view = memoryview(data).cast("B")
        size = view.nbytes
        zip64 = self._force_zip64 or size >= _U32 or self._offset >= _U32
        encoded = name.encode("utf-8")
        offset = self._offset
        is_data = name.startswith(DATA_PREFIX)
        self._emit(self._local_header(encoded, size, zip64), hashed=True)
        body_offset = self._offset
        crc = 0
        if is_data and size > CHUNK:
            # Overlap CRC-32 (zlib releases the GIL) of chunk i with the write of chunk i.
            if self._crc_pool is None:
                from concurrent.futures import ThreadPoolExecutor  # only for a large record: ~6 ms of a CLI start

                self._crc_pool = ThreadPoolExecutor(max_workers=1,
                                                                       thread_name_prefix="reprotrain-crc")
            pending = None
            for start in range(0, size, CHUNK):
                chunk = view[start:start + CHUNK]
                if pending is not None:
                    crc = pending.result()
                pending = self._crc_pool.submit(_crc_and_hash, chunk, crc, self._tensor_hash)
                self._emit(chunk, hashed=False)
            if pending is not None:
                crc = pending.result()
        else:
            crc = _crc_and_hash(view, 0, self._tensor_hash if is_data else None)
            self._emit(view, hashed=not is_data)
        if zip64:
            descriptor = struct.pack("<IIQQ", _SIG_DESCRIPTOR, crc, size, size)
        else:
            descriptor = struct.pack("<IIII", _SIG_DESCRIPTOR, crc, size, size)
        self._emit(descriptor, hashed=True)
        self._entries.append((name, offset, size, crc, zip64, body_offset))

    @property
    def tensors_digest(self) -> str | None:
        """"sha256:<hex>" over every tensor body written so far, in file order (with ``hash_tensors``)."""
        return None if self._tensor_hash is None else "sha256:" + self._tensor_hash.hexdigest()

    def close(self, sign: "Callable[[str, str], SignatureLine] | None" = None) -> str:
        """Write the central directory and the trailer; return the integrity digest ("sha256:<hex>").

        ``sign(digest, tensors_digest)`` returns the signature line of a signed checkpoint (the writer must
        hash tensors): the comment length (hashed) is then that of a signed comment, and the line follows the
        integrity trailer.
        """
        if sign is not None and self._tensor_hash is None:
            raise ValueError("a signed container needs ContainerWriter(hash_tensors=True)")
        if self._crc_pool is not None:
            self._crc_pool.shutdown(wait=True)
        cd_start = self._offset
        for name, offset, size, crc, zip64, _ in self._entries:
            encoded = name.encode("utf-8")
            need64 = zip64 or offset >= _U32
            extra = struct.pack("<HHQQQ", _ZIP64_ID, 24, size, size, offset) if need64 else b""
            self._emit(_CENTRAL.pack(
                _SIG_CENTRAL, 45 if need64 else 20, 45 if need64 else 20, _FLAGS, 0, 0, 0x21, crc,
                _U32 if need64 else size, _U32 if need64 else size, len(encoded), len(extra), 0, 0, 0, 0,
                _U32 if need64 else offset) + encoded + extra, hashed=True)
        cd_size = self._offset - cd_start
        count = len(self._entries)
        if self._force_zip64 or cd_start >= _U32 or count >= 0xFFFF:
            eocd64_at = self._offset
            self._emit(_EOCD64.pack(_SIG_EOCD64, 44, 45, 45, 0, 0, count, count, cd_size, cd_start), hashed=True)
            self._emit(_LOC64.pack(_SIG_LOC64, 0, eocd64_at, 1), hashed=True)
            eocd = _EOCD.pack(_SIG_EOCD, 0, 0, 0xFFFF, 0xFFFF, _U32, _U32, 0)
        else:
            eocd = _EOCD.pack(_SIG_EOCD, 0, 0, count, count, cd_size, cd_start, 0)
        # The comment length is part of the hashed EOCD, so fix it before hashing.
        comment_len = SIGNED_COMMENT_LEN if sign is not None else UNSIGNED_COMMENT_LEN
        eocd = eocd[:-2] + struct.pack("<H", comment_len)
        self._emit(eocd, hashed=True)
        digest = self._meta_hash.hexdigest()
        comment_start = self._offset
        comment = TRAILER_PREFIX + digest.encode("ascii")
        line = None
        if sign is not None:
            line = sign("sha256:" + digest, self.tensors_digest)
            comment += b"\n" + line.encode()
        self._emit(comment, hashed=False)
        self._flush()
        self.directory = Directory({name: Record(name, offset, body, size, crc)
                                    for name, offset, size, crc, _, body in self._entries},
                                   "sha256:" + digest, comment_start, self._offset, line)
        return "sha256:" + digest


# --------------------------------------------------------------------------- reading


@dataclass
class Directory:
    """The parsed zip directory of a container (no record bodies read)."""

    records: dict[str, Record]
    trailer_digest: str | None  # "sha256:<hex>" from the zip comment; None if absent
    comment_start: int
    file_size: int
    signature: SignatureLine | None = None  # the signature line of a signed checkpoint

    @property
    def eocd_offset(self) -> int:
        """Where the (classic) end-of-central-directory record starts: it ends where the comment starts."""
        return self.comment_start - _EOCD.size


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ContainerError(f"truncated: expected {size} bytes at offset {offset}, file ends early")
    return data


def read_directory(f: BinaryIO) -> Directory:
    """Parse the end-of-central-directory, the trailer and the central directory."""
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    if file_size < _EOCD.size:
        raise NotAContainer(f"not a zip archive ({file_size} bytes)")
    tail_len = min(file_size, _EOCD.size + 0xFFFF)
    tail = _read_at(f, file_size - tail_len, tail_len)
    pos = tail.rfind(struct.pack("<I", _SIG_EOCD))
    while pos >= 0:
        # The right EOCD is the one whose comment reaches exactly the end of the file.
        comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
        if pos + _EOCD.size + comment_len == tail_len:
            break
        pos = tail.rfind(struct.pack("<I", _SIG_EOCD), 0, pos)
    if pos < 0:
        f.seek(0)
        if f.read(4) == struct.pack("<I", _SIG_LOCAL):
            raise ContainerError("zip archive without its end record (truncated or damaged)")
        raise NotAContainer("not a zip archive (no end-of-central-directory record)")
    eocd_at = file_size - tail_len + pos
    (_, _, _, _, count, cd_size, cd_start, comment_len) = _EOCD.unpack_from(tail, pos)
    comment = tail[pos + _EOCD.size:]
    comment_start = eocd_at + _EOCD.size
    trailer = None
    signature = None
    if comment.startswith(TRAILER_PREFIX):
        hexpart = comment[len(TRAILER_PREFIX):UNSIGNED_COMMENT_LEN]
        if len(hexpart) != 64 or not set(hexpart) <= _HEX:
            raise ContainerError("integrity trailer is damaged")
        if len(comment) == SIGNED_COMMENT_LEN and comment[UNSIGNED_COMMENT_LEN:UNSIGNED_COMMENT_LEN + 1] == b"\n":
            signature = parse_signature_line(comment[UNSIGNED_COMMENT_LEN + 1:])
        elif len(comment) != UNSIGNED_COMMENT_LEN:
            raise ContainerError("integrity trailer is damaged")
        trailer = "sha256:" + hexpart.decode("ascii")
    if count == 0xFFFF or cd_start == _U32 or cd_size == _U32:
        if eocd_at < _LOC64.size:
            raise ContainerError("ZIP64 locator missing")
        sig, _, eocd64_at, _ = _LOC64.unpack(_read_at(f, eocd_at - _LOC64.size, _LOC64.size))
        if sig != _SIG_LOC64:
            raise ContainerError("ZIP64 locator missing")
        fields = _EOCD64.unpack(_read_at(f, eocd64_at, _EOCD64.size))
        if fields[0] != _SIG_EOCD64:
            raise ContainerError("ZIP64 end-of-central-directory record damaged")
        count, cd_size, cd_start = fields[7], fields[8], fields[9]
    if cd_start + cd_size > eocd_at:
        raise ContainerError("central directory lies outside the file (truncated or damaged)")
    cd = _read_at(f, cd_start, cd_size)
    records: dict[str, Record] = {}
    pos = 0
    for _ in range(count):
        if pos + _CENTRAL.size > len(cd):
            raise ContainerError("central directory truncated")
        fields = _CENTRAL.unpack_from(cd, pos)
        if fields[0] != _SIG_CENTRAL:
            raise ContainerError("central directory damaged")
        crc, csize, usize, nlen, xlen, clen, offset = fields[7], fields[8], fields[9], fields[10], fields[11], fields[12], fields[16]
        method = fields[4]
        name_bytes = cd[pos + _CENTRAL.size: pos + _CENTRAL.size + nlen]
        extra = cd[pos + _CENTRAL.size + nlen: pos + _CENTRAL.size + nlen + xlen]
        pos += _CENTRAL.size + nlen + xlen + clen
        if usize == _U32 or offset == _U32 or csize == _U32:
            usize, csize, offset = _parse_zip64_extra(extra, usize, csize, offset)
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise ContainerError("record name is not UTF-8") from None
        # A compressed record is not a checkpoint's (the reader refuses it when the file has a manifest); its
        # extent on disk is its compressed size. Other tools' zips (torch.save output repacked deflated) pass.
        records[name] = Record(name, offset, -1, usize if method == 0 else csize, crc, method)
    # Resolve each body's offset from its local header.
    for name, rec in list(records.items()):
        header = _read_at(f, rec.header_offset, _LOCAL.size)
        fields = _LOCAL.unpack(header)
        if fields[0] != _SIG_LOCAL:
            raise ContainerError(f"local header of {name} damaged")
        nlen, xlen = fields[9], fields[10]
        data_offset = rec.header_offset + _LOCAL.size + nlen + xlen
        if data_offset + rec.size > cd_start:
            raise ContainerError(f"record {name} extends past the central directory (truncated or damaged)")
        records[name] = Record(name, rec.header_offset, data_offset, rec.size, rec.crc32, rec.method)
    return Directory(records, trailer, comment_start, file_size, signature)


def _parse_zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        hid, hlen = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4: pos + 4 + hlen]
        if hid == _ZIP64_ID:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if usize == _U32:
                usize = values.pop(0)
            if csize == _U32:
                csize = values.pop(0)
            if offset == _U32:
                offset = values.pop(0)
            return usize, csize, offset
        pos += 4 + hlen
    raise ContainerError("ZIP64 extra field missing")


def read_record(f: BinaryIO, record: Record, *, check_crc: bool = True) -> bytes:
    data = _read_at(f, record.data_offset, record.size)
    if check_crc and crc32(data) != record.crc32:
        raise ContainerError(f"record {record.name} fails its CRC-32 check")
    return data


def _regions(directory: Directory, end: int | None = None) -> Iterator[tuple[int, int, Record | None]]:
    """Yield (start, end, record-or-None) covering [0, end or comment_start) in order: data bodies carry their record."""
    stop = directory.comment_start if end is None else end
    bodies = sorted((r for r in directory.records.values() if r.name.startswith(DATA_PREFIX)),
                    key=lambda r: r.data_offset)
    pos = 0
    for rec in bodies:
        if rec.data_offset < pos:
            raise ContainerError(f"record {rec.name} overlaps another record")
        if rec.data_offset > pos:
            yield pos, rec.data_offset, None
        yield rec.data_offset, rec.data_offset + rec.size, rec
        pos = rec.data_offset + rec.size
    if pos < stop:
        yield pos, stop, None


@dataclass
class IntegrityReport:
    ok: bool
    problems: list[str]
    bytes_checked: int
    tensors_digest: str | None = None  # "sha256:<hex>" over the tensor bodies in file order, when asked for


def check_integrity(f: BinaryIO, directory: Directory, *, hash_tensors: bool = False) -> IntegrityReport:
    """Re-read every byte: CRC-32 of each data body, SHA-256 of the rest, compared with the trailer.
    ``hash_tensors``: also the tensors' SHA-256 (report.tensors_digest), which a signature binds."""
    return check_and_redigest(f, directory, hash_tensors=hash_tensors)[0]


def _crc_and_hash(chunk, crc: int, sha) -> int:
    """CRC-32 of a chunk continued from ``crc``; the chunk also goes into ``sha`` when one is given. Both release
    the GIL, and one worker thread takes chunks in order, so the SHA-256 sees the bodies in file order."""
    if sha is not None:
        sha.update(chunk)
    return crc32(chunk, crc)


def check_and_redigest(f: BinaryIO, directory: Directory, comment_len: int | None = None, *,
                       into: Callable[[Record], memoryview] | None = None,
                       hash_tensors: bool = False) -> tuple[IntegrityReport, str | None]:
    """check_integrity, and (with ``comment_len``) in the same pass the digest the same bytes would have with
    that comment length in the end record: what signing after the fact needs (the rest of the file is unchanged).

    With ``into``, each data body is read straight into the writable buffer ``into(record)`` returns (a tensor's
    memory) and its CRC-32 is computed there: a verified load that reads the file once, not twice.
    ``hash_tensors``: the same pass also hashes the tensor bodies (report.tensors_digest) for a signature check.
    """
    if directory.trailer_digest is None:
        return IntegrityReport(False, ["no integrity trailer"], 0), None
    problems: list[str] = []
    meta = hashlib.sha256()
    tensors = hashlib.sha256() if hash_tensors else None
    checked = 0
    eocd_at = directory.eocd_offset
    regions = list(_regions(directory, eocd_at))
    # The bounce buffer serves only what is not read into tensor memory: with ``into``, the small metadata.
    through_buffer = [end - start for start, end, rec in regions if rec is None or into is None]
    buf = bytearray(min(CHUNK, max(through_buffer, default=1)))
    pool = None
    try:
        for start, end, rec in regions:
            f.seek(start)
            if rec is not None and into is not None:
                if rec.size > READ_CHUNK and pool is None:
                    from concurrent.futures import ThreadPoolExecutor  # only for a large record

                    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprotrain-crc")
                # A body of one chunk has nothing to overlap its CRC with: a round trip to the pool would only
                # add a thread hand-off per small tensor.
                crc = _read_body_into(f, into(rec), start, pool if rec.size > READ_CHUNK else None, tensors)
                checked += rec.size
            else:
                crc = 0
                remaining = end - start
                while remaining:
                    n = f.readinto(memoryview(buf)[:min(len(buf), remaining)])
                    if not n:
                        raise ContainerError(f"truncated: file ends at byte {start + (end - start - remaining)}")
                    chunk = memoryview(buf)[:n]
                    if rec is None:
                        meta.update(chunk)
                    else:
                        crc = _crc_and_hash(chunk, crc, tensors)
                    remaining -= n
                    checked += n
            if rec is not None and crc != rec.crc32:
                problems.append(f"tensor record {rec.name} is damaged (CRC-32 {crc:08x}, expected {rec.crc32:08x})")
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    eocd = _read_at(f, eocd_at, _EOCD.size)
    checked += len(eocd)
    other = None
    if comment_len is not None:
        redigest = meta.copy()
        redigest.update(eocd[:-2] + struct.pack("<H", comment_len))
        other = "sha256:" + redigest.hexdigest()
    meta.update(eocd)
    if "sha256:" + meta.hexdigest() != directory.trailer_digest:
        problems.append("metadata (pickle, manifest, zip headers or directory) does not match the integrity digest")
    tensors_digest = None if tensors is None else "sha256:" + tensors.hexdigest()
    return IntegrityReport(not problems, problems, checked, tensors_digest), other


def _read_body_into(f: BinaryIO, target: memoryview, start: int, pool, sha=None) -> int:
    """Fill ``target`` from the file in chunks; the CRC-32 (and ``sha`` update) of chunk i runs on ``pool`` while
    chunk i+1 is read."""
    target = target.cast("B")
    crc, pending, pos = 0, None, 0
    while pos < len(target):
        chunk = target[pos:pos + READ_CHUNK]
        filled = 0
        while filled < len(chunk):
            n = f.readinto(chunk[filled:])
            if not n:
                raise ContainerError(f"truncated: file ends at byte {start + pos + filled}")
            filled += n
        if pool is None:
            crc = _crc_and_hash(chunk, crc, sha)
        else:
            if pending is not None:
                crc = pending.result()
            pending = pool.submit(_crc_and_hash, chunk, crc, sha)
        pos += len(chunk)
    if pending is not None:
        crc = pending.result()
    return crc


def iter_data_records(directory: Directory) -> Iterable[Record]:
    return (r for r in directory.records.values() if r.name.startswith(DATA_PREFIX))
