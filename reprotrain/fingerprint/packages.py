"""Package inventories: the conda prefix (conda-meta/*.json) and the Python distributions.

Both are read straight from disk, without a conda executable and without importing anything
heavy, so that every rank of a distributed job can afford them at start and resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import site
import sys
import sysconfig

from reprotrain import safeio
from reprotrain.envlock.prefix import read_conda_record  # the one conda-meta header parser (torch-free)
from reprotrain.errors import ReprotrainError

_NAME_NORMALISE = re.compile(r"[-_.]+")



def find_conda_prefix(conda_prefix_env: str | None) -> str | None:
    """The conda prefix of this interpreter: $CONDA_PREFIX, else sys.prefix, else sys.base_prefix (a venv
    made from a conda Python), whichever first holds a conda-meta directory."""
    for candidate in (conda_prefix_env, sys.prefix, sys.base_prefix):
        if candidate and os.path.isdir(os.path.join(candidate, "conda-meta")):
            return os.path.abspath(candidate)
    return None


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
            with io.TextIOWrapper(safeio.open_regular(os.path.join(path, filename), limit=safeio.LIMITS["record"],
                                                      what=filename), encoding="utf-8", errors="replace") as handle:
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
        except (OSError, ReprotrainError):  # missing, or not a regular file: not a readable distribution
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
