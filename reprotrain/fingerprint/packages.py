"""Package inventories: the conda prefix (conda-meta/*.json) and the Python distributions.

Both are read straight from disk, without a conda executable and without importing anything
heavy, so that every rank of a distributed job can afford them at start and resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import site
import sys
import sysconfig

# conda and rattler both write conda-meta records pretty-printed with a two-space indent, so a
# top-level key is exactly `\n  "key": ` while nested keys (paths_data, link) sit deeper. Finding
# those few keys with bytes.find avoids parsing megabytes of file lists for large packages.
_TOP_LEVEL_KEYS = ("name", "version", "build", "sha256", "md5")
_NAME_NORMALISE = re.compile(r"[-_.]+")


def find_conda_prefix(conda_prefix_env: str | None) -> str | None:
    """The conda prefix of this interpreter: $CONDA_PREFIX, else sys.prefix, else sys.base_prefix (a venv
    made from a conda Python), whichever first holds a conda-meta directory."""
    for candidate in (conda_prefix_env, sys.prefix, sys.base_prefix):
        if candidate and os.path.isdir(os.path.join(candidate, "conda-meta")):
            return os.path.abspath(candidate)
    return None


def _top_level_value(data: bytes, key: str):
    marker = b'\n  "' + key.encode() + b'": '
    at = data.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    end = data.find(b"\n", start)
    raw = data[start:end if end >= 0 else len(data)].rstrip().rstrip(b",")
    if len(raw) >= 2 and raw[0] == raw[-1] == 0x22 and b"\\" not in raw and b'"' not in raw[1:-1]:
        return raw[1:-1].decode("utf-8")  # the common case: a plain string, no JSON escapes to undo
    return json.loads(raw)


def _read_bytes(path: str) -> bytes:
    # Reading hundreds of small files is syscall-bound: os.open/os.read skips the buffered file object's
    # extra fstat/seek calls, about a third faster than open().read() on a 300-record prefix.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_conda_record(path: str) -> dict:
    """name, version, build and archive hash of one conda-meta record (raises ValueError if unreadable)."""
    data = _read_bytes(path)
    try:
        record = {key: _top_level_value(data, key) for key in _TOP_LEVEL_KEYS}
    except ValueError:
        record = {}
    if not record.get("name") or not record.get("version") or record.get("build") is None:
        # Not in the usual two-space layout (hand-written or minified): parse it fully.
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        record = {key: doc.get(key) for key in _TOP_LEVEL_KEYS}
    if not isinstance(record.get("name"), str) or not isinstance(record.get("version"), str):
        raise ValueError("no name or version")
    sha256, md5 = record.get("sha256"), record.get("md5")
    return {
        "name": record["name"],
        "version": record["version"],
        "build": str(record.get("build") or ""),
        "hash": f"sha256:{sha256}" if sha256 else (f"md5:{md5}" if md5 else None),
    }


def conda_packages(prefix: str | None) -> list[dict]:
    """Every package record of PREFIX, sorted by name (empty without a prefix)."""
    if prefix is None:
        return []
    meta = os.path.join(prefix, "conda-meta")
    records = []
    with os.scandir(meta) as entries:
        for entry in entries:
            if not entry.name.endswith(".json") or not entry.is_file():
                continue
            try:
                records.append(read_conda_record(entry.path))
            except (OSError, ValueError) as exc:
                from reprotrain.errors import InvalidDocumentError

                raise InvalidDocumentError(f"unreadable conda-meta record ({exc})", path=entry.path) from exc
    records.sort(key=lambda r: (r["name"], r["version"], r["build"], r["hash"] or ""))
    return records


def site_packages_dirs() -> list[str]:
    """The interpreter's installation directories (not the working directory, so the inventory
    does not change with where a command runs)."""
    dirs: list[str] = []
    candidates = [sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib")]
    candidates += list(getattr(site, "getsitepackages", lambda: [])())
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    for candidate in candidates:
        if candidate and os.path.isdir(candidate) and os.path.realpath(candidate) not in map(os.path.realpath, dirs):
            dirs.append(candidate)
    return dirs


def normalise_name(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return _NAME_NORMALISE.sub("-", name).lower()


def _metadata_name_version(path: str) -> tuple[str, str] | None:
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, filename), encoding="utf-8", errors="replace") as handle:
                name = version = None
                for line in handle:
                    if not line.strip():
                        break  # the header block ends at the first blank line
                    if line.startswith("Name:"):
                        name = line[5:].strip()
                    elif line.startswith("Version:"):
                        version = line[8:].strip()
                if name and version:
                    return name, version
        except OSError:
            continue
    return None


def python_distributions(dirs: list[str] | None = None) -> list[dict]:
    """Installed Python distributions (name, version), sorted; the first found wins, as for imports."""
    found: dict[str, dict] = {}
    for directory in site_packages_dirs() if dirs is None else dirs:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if suffix not in ("dist-info", "egg-info") or not dot:
                continue
            # Installers name the folder `{name}-{version}.dist-info`; read the header only when they did not.
            name, dash, version = stem.partition("-")
            if suffix == "egg-info" or not dash or "-" in version:
                parsed = _metadata_name_version(entry.path) if entry.is_dir() else None
                if parsed is None:
                    continue
                name, version = parsed
            key = normalise_name(name)
            found.setdefault(key, {"name": key, "version": version})
    return [found[key] for key in sorted(found)]


def inventory_digest(items: list[dict], fields: tuple[str, ...]) -> str:
    """sha256 over the canonical JSON of the sorted records' FIELDS."""
    rows = sorted([item.get(f) or "" for f in fields] for item in items)
    canonical = json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()
