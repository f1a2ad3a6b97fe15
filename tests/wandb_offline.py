"""Read the records of a W&B offline run file (run-<id>.wandb) as W&B writes them, without W&B's servers.

The file is W&B's LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of
records, each with a 7-byte header (CRC-32C, length, type FULL/FIRST/MIDDLE/LAST) around a serialized
wandb_internal_pb2.Record. Records are read with W&B's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")
RECORD = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data, 0)
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, f"{path}: not a W&B offline run file"
    pos, pending = HEADER.size, b""
    while pos + RECORD.size <= len(data):
        room = BLOCK - pos % BLOCK
        if room < RECORD.size:
            pos += room
            continue
        _crc, length, kind = RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += room
            continue
        body = data[pos + RECORD.size:pos + RECORD.size + length]
        pos += RECORD.size + length
        if kind == FULL:
            pending = body
        elif kind == FIRST:
            pending = body
            continue
        elif kind == MIDDLE:
            pending += body
            continue
        elif kind == LAST:
            pending += body
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def history(path: Path) -> list[dict]:
    """Every history row (what run.log wrote) of one offline run file."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_ids(path: Path) -> set[str]:
    return {record.run.run_id for record in records(path) if record.WhichOneof("record_type") == "run"}


def summaries(path: Path) -> dict:
    out = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def offline_runs(directory: Path) -> list[Path]:
    """run-<id>.wandb of every offline run under directory/wandb, oldest first."""
    return sorted(Path(directory).glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
