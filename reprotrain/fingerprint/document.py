"""The fingerprint document: its JSON Schema, validation, reading, writing and digest."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from reprotrain.errors import InvalidDocumentError, ReprotrainError

SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "schemas/fingerprint.schema.json"

# Fields left out of the digest: when and how the document was collected, where things live on
# this machine, and the long package lists (their digests stay in).
_DIGEST_EXCLUDED = {("collected_at",), ("sources",), ("host",), ("packages", "conda", "packages"),
                    ("packages", "pip", "packages"), ("packages", "conda", "prefix"), ("lock", "file"),
                    ("code", "repository")}


def empty_lock_section() -> dict:
    """The `lock` section before the lock layer fills it: every field present and null."""
    return {"file": None, "sha256": None, "content_hash": None, "platform": None, "matches": None}


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return (Path(__file__).parent / SCHEMA_RESOURCE).read_text(encoding="utf-8")  # as checkpoint/manifest.py


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON Schema (draft 2020-12) shipped in the package."""
    return json.loads(_schema_text())


def validate(doc, *, source: str | None = None) -> dict:
    """Return DOC if it is a valid fingerprint, else raise InvalidDocumentError naming SOURCE."""
    if not isinstance(doc, dict):
        raise InvalidDocumentError(f"not a fingerprint: the top level is {type(doc).__name__}, not an object",
                                   path=source)
    version = doc.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        raise InvalidDocumentError(f"fingerprint schema_version {version} is not supported (this reprotrain "
                                   f"reads version {SCHEMA_VERSION})", path=source)
    from reprotrain import schema as json_schema

    if json_schema.is_valid(_schema_text(), doc):
        return doc
    error = json_schema.first_error(schema(), doc, best=True)
    if error is None:
        raise InvalidDocumentError("invalid fingerprint: nested too deeply", path=source)
    where = ".".join(str(part) for part in error.absolute_path) or "document"
    raise InvalidDocumentError(f"invalid fingerprint: {where}: {error.message}", path=source)


def load(path) -> dict:
    """Read and validate the fingerprint at PATH (a JSON file)."""
    path = os.fspath(path)
    from reprotrain import safeio

    try:  # a regular file only, at most the fingerprint limit
        data = safeio.read_regular(path, limit=safeio.LIMITS["fingerprint"], what="fingerprint")
    except InvalidDocumentError:
        raise
    except ReprotrainError as exc:
        raise InvalidDocumentError(exc.message, path=path) from None
    try:
        doc = json.loads(data.decode("utf-8"))  # decoded here: json.loads(bytes) would guess UTF-16/32
    except UnicodeDecodeError as exc:
        raise InvalidDocumentError(f"not a fingerprint: not UTF-8 text ({exc.reason})", path=path) from exc
    except json.JSONDecodeError as exc:
        raise InvalidDocumentError(f"not a fingerprint: invalid JSON at line {exc.lineno} column {exc.colno}: "
                                   f"{exc.msg}", path=path) from exc
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting deeper than Python's stack
        raise InvalidDocumentError(f"not a fingerprint: {str(exc).split(';')[0][:120]}", path=path) from None
    return validate(doc, source=path)


def dumps(doc: dict) -> str:
    """The JSON text written for a fingerprint."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write(doc: dict, path) -> str:
    """Validate DOC and write it to PATH atomically (temp file in the same directory, fsync, rename)."""
    path = os.fspath(path)
    validate(doc, source=path)
    directory = os.path.dirname(os.path.abspath(path))
    import tempfile  # only when writing: every reader imports this module

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InvalidDocumentError(f"cannot write fingerprint: {exc.strerror or exc}", path=path) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumps(doc))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise InvalidDocumentError(f"cannot write fingerprint: {exc.strerror or exc}", path=path) from exc
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    return path


def _strip(value, path: tuple):
    if isinstance(value, dict):
        return {key: _strip(item, path + (key,)) for key, item in value.items() if path + (key,) not in _DIGEST_EXCLUDED}
    return value


def digest(doc: dict) -> str:
    """"sha256:<hex>" of the canonical JSON of the identity-relevant fields: two fingerprints of the same
    environment have the same digest whenever and wherever they were collected."""
    canonical = json.dumps(_strip(doc, ()), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
