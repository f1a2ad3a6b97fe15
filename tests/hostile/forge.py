"""Forging reprotrain checkpoints the way an attacker would, from docs/checkpoint-format.md alone.

No reprotrain code is used to write these files: records are written with Python's zipfile (stored), and
the integrity trailer is recomputed as the format doc describes it: SHA-256 over every byte before the zip
comment except the bodies of ``archive/data/*`` records (whose CRC-32s, in the hashed region, cover them).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import zipfile

TRAILER_PREFIX = b"reprotrain-integrity/1 sha256:"
MANIFEST = "archive/reprotrain/manifest.json"


def read_records(data: bytes) -> list[tuple[str, bytes]]:
    """The records of a checkpoint, in file order (zipfile checks each CRC-32)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
        return [(info.filename, archive.read(info)) for info in infos]


def write_archive(records: list[tuple[str, bytes]], *, compress: dict[str, int] | None = None,
                  trailer: bool = True) -> bytes:
    """A zip of RECORDS (stored unless COMPRESS maps a name to a zipfile method) with a recomputed trailer."""
    compress = compress or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in records:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = compress.get(name, zipfile.ZIP_STORED)
            archive.writestr(info, body)
        if trailer:
            archive.comment = TRAILER_PREFIX + b"0" * 64  # the comment length is hashed: fix it first
    data = buffer.getvalue()
    if trailer:
        data = data[: len(data) - 64] + recompute_digest(data).encode()
    return data


def _bodies(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every archive/data/* body, from the local headers the central directory points at."""
    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if not info.filename.startswith("archive/data/"):
                continue
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            spans.append((start, start + info.compress_size))
    return sorted(spans)


def recompute_digest(data: bytes) -> str:
    """The trailer digest of DATA (whose last 64 bytes are the digest's hex digits), per the format doc."""
    comment_start = len(data) - len(TRAILER_PREFIX) - 64
    digest = hashlib.sha256()
    pos = 0
    for start, end in _bodies(data):
        digest.update(data[pos:start])
        pos = end
    digest.update(data[pos:comment_start])
    return digest.hexdigest()


def replace_records(data: bytes, replacements: dict[str, bytes], *, extra: list[tuple[str, bytes]] = (),
                    compress: dict[str, int] | None = None) -> bytes:
    """DATA with some record bodies replaced (and EXTRA records added before archive/version), re-sealed."""
    records = [(name, replacements.get(name, body)) for name, body in read_records(data)]
    if extra:
        records = records[:-1] + list(extra) + records[-1:]
    return write_archive(records, compress=compress)


class _Payload:
    """Pickles as CALLABLE(*ARGS): what `pickle.loads` would run."""

    def __init__(self, callable_, *args):
        self.callable, self.args = callable_, args

    def __reduce__(self):
        return self.callable, self.args


def canary_command(canary_path: str) -> str:
    return f"touch {canary_path}"


def payload_pickle(canary_path: str, *, via: str = "system", protocol: int = 2) -> bytes:
    """A pickle that, if unpickled, creates CANARY_PATH: via posix.system, builtins.eval or builtins.exec."""
    import os

    if via == "system":
        obj = _Payload(os.system, canary_command(canary_path))
    elif via == "eval":
        obj = _Payload(eval, f"open({canary_path!r}, 'w').close()")
    elif via == "exec":
        obj = _Payload(exec, f"open({canary_path!r}, 'w').close()")
    else:
        raise ValueError(via)
    return pickle.dumps({"reprotrain": {}, "state": {"x": obj}}, protocol=protocol)


def forged_payload_checkpoint(genuine: bytes, canary_path: str, *, via: str = "system") -> bytes:
    """A genuine checkpoint whose data.pkl now runs a payload; CRC-32s and trailer recomputed."""
    return replace_records(genuine, {"archive/data.pkl": payload_pickle(canary_path, via=via)})


def forged_manifest(genuine: bytes, edit) -> bytes:
    """A genuine checkpoint with its JSON manifest changed by EDIT(manifest) (in place), re-sealed."""
    records = dict(read_records(genuine))
    manifest = json.loads(records[MANIFEST])
    edit(manifest)
    return replace_records(genuine, {MANIFEST: json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()})
