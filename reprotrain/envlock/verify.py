"""`reprotrain env verify`: is the environment in front of us the one the lock pins?

Compares a prefix's conda-meta records and pip dist-info with the lock's entries for one platform:
packages missing, extra, or installed with a different version, build or archive hash. `deep=True`
also re-hashes every installed file against conda-meta `paths_data` (and pip's RECORD), which catches
files edited or deleted after installation.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reprotrain import safeio
from reprotrain.envlock.prefix import (CondaRecord, PipRecord, PrefixContents, current_platform, default_prefix,
                                       normalise_pip_name, read_prefix)
from reprotrain.errors import InvalidDocumentError, ReprotrainError, os_error_message

# Difference kinds, in the order a report lists them.
KINDS = ("missing", "extra", "version", "build", "hash", "file-modified", "file-missing")


@dataclass(frozen=True)
class Difference:
    kind: str
    manager: str  # "conda" or "pip"
    name: str
    locked: str | None = None
    installed: str | None = None
    detail: str | None = None


@dataclass
class VerifyReport:
    lockfile: str
    prefix: str
    platform: str
    deep: bool
    checked: int  # locked packages compared
    files_checked: int = 0  # installed files re-hashed (deep only)
    differences: list[Difference] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["matches"] = self.matches
        return doc


@dataclass(frozen=True)
class LockedEntry:
    """The parts of a conda-lock entry that identify an installed package."""

    manager: str
    name: str
    version: str
    build: str | None
    url: str
    md5: str | None
    sha256: str | None
    categories: frozenset[str]


def locked_entries(lockfile: str | os.PathLike, platform: str,
                   categories: set[str] | None = None) -> list[LockedEntry]:
    """LOCKFILE's entries for PLATFORM (optionally only those in CATEGORIES); error if the platform is absent."""
    from reprotrain.envlock.lockfile import build_string, load_lock, packages_for_platform

    lock = load_lock(lockfile)
    platforms = list(lock.metadata.platforms)
    if platform not in platforms:
        raise InvalidDocumentError(
            f"the lock has no packages for platform {platform} (it has {', '.join(platforms) or 'none'})",
            path=lockfile)
    entries = []
    for package in packages_for_platform(lock, platform):
        cats = frozenset(getattr(package, "categories", None) or {"main"})
        if categories and not (cats & categories):
            continue
        entries.append(LockedEntry(manager=package.manager, name=package.name, version=package.version,
                                   build=build_string(package), url=package.url, md5=package.hash.md5,
                                   sha256=package.hash.sha256, categories=cats))
    return entries


def verify_environment(lockfile: str | os.PathLike, prefix: str | os.PathLike | None = None,
                       platform: str | None = None, deep: bool = False,
                       categories: set[str] | None = None) -> VerifyReport:
    """Compare PREFIX (default: the active environment) with LOCKFILE.

    PLATFORM defaults to the platform of the prefix's own packages, then to this machine's.
    Raises ReprotrainError (exit 2) when the lock or the prefix cannot be read.
    """
    prefix_path = Path(prefix) if prefix is not None else default_prefix()
    contents = read_prefix(prefix_path)
    platform = platform or contents.platform() or current_platform()
    entries = locked_entries(lockfile, platform, categories)
    report = VerifyReport(lockfile=os.path.abspath(lockfile), prefix=str(prefix_path.resolve()),
                          platform=platform, deep=deep, checked=len(entries))
    locked_conda = {e.name: e for e in entries if e.manager == "conda"}
    locked_pip = {normalise_pip_name(e.name): e for e in entries if e.manager == "pip"}
    diffs = report.differences
    for name, entry in locked_conda.items():
        record = contents.conda.get(name)
        if record is None:
            diffs.append(Difference("missing", "conda", name, locked=_describe(entry.version, entry.build)))
        else:
            diffs.extend(_compare_conda(entry, record))
    for name, record in contents.conda.items():
        if name not in locked_conda:
            diffs.append(Difference("extra", "conda", name, installed=_describe(record.version, record.build)))
    for name, entry in locked_pip.items():
        pip_record = contents.pip.get(name)
        if pip_record is None:
            diffs.append(Difference("missing", "pip", name, locked=entry.version))
        elif pip_record.version != entry.version:
            diffs.append(Difference("version", "pip", name, locked=entry.version, installed=pip_record.version))
    for name, pip_record in contents.pip.items():
        if name not in locked_pip:
            diffs.append(Difference("extra", "pip", name, installed=pip_record.version))
    if deep:
        report.files_checked = _deep_check(contents, diffs)
    diffs.sort(key=lambda d: (KINDS.index(d.kind), d.manager, d.name, d.detail or ""))
    return report


def _describe(version: str, build: str | None) -> str:
    return f"{version} {build}" if build else version


def _compare_conda(entry: LockedEntry, record: CondaRecord) -> list[Difference]:
    if record.version != entry.version:
        return [Difference("version", "conda", entry.name, locked=entry.version, installed=record.version)]
    if entry.build and record.build != entry.build:
        return [Difference("build", "conda", entry.name, locked=entry.build, installed=record.build)]
    # The archive hash is the package's identity; compare every algorithm both sides recorded.
    for algorithm in ("sha256", "md5"):
        locked, installed = getattr(entry, algorithm), getattr(record, algorithm)
        if locked and installed and locked.lower() != installed.lower():
            return [Difference("hash", "conda", entry.name, locked=f"{algorithm}:{locked}",
                               installed=f"{algorithm}:{installed}")]
    if not (entry.md5 and record.md5) and not (entry.sha256 and record.sha256):
        return [Difference("hash", "conda", entry.name, locked=entry.md5 or entry.sha256,
                           detail="conda-meta records no archive hash to compare with the lock")]
    return []


def _deep_check(contents: PrefixContents, diffs: list[Difference]) -> int:
    checked = 0
    root = contents.prefix.resolve()
    for record in contents.conda.values():
        for entry in record.paths:
            if entry.get("path_type") in ("softlink", "directory"):
                continue
            # Files with a prefix placeholder are rewritten at install time; conda and rattler record that hash.
            expected = entry.get("sha256_in_prefix") or entry.get("sha256")
            if not expected:
                continue
            checked += 1
            diff = _check_file(contents.prefix / entry["_path"], expected, "conda", record.name, entry["_path"], root)
            if diff:
                diffs.append(diff)
    for pip_record in contents.pip.values():
        checked += _check_record_file(pip_record, diffs, root)
    return checked


def _check_file(path: Path, expected_sha256: str, manager: str, name: str, rel: str,
                root: Path) -> Difference | None:
    """Re-hash one installed file. Only a regular file inside the prefix is read: a path that leaves it (``..``,
    an absolute path, a symlink pointing out, e.g. to /dev/zero or a secret) is reported, never opened, and its
    hash never printed."""
    if not isinstance(expected_sha256, str):
        return Difference("file-modified", manager, name, detail=f"{rel}: the record's hash is not a string")
    try:
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            return Difference("file-modified", manager, name, detail=f"{rel}: leaves the prefix; not read")
        if not resolved.exists() and not path.is_symlink():
            return Difference("file-missing", manager, name, detail=rel)
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long: no file of the record can be there
        return Difference("file-modified", manager, name, detail=f"{rel}: not a usable path ({os_error_message(exc)})")
    try:
        actual = _sha256_file(resolved)
    except safeio.Missing:
        return Difference("file-missing", manager, name, detail=rel)
    except ReprotrainError as exc:
        return Difference("file-modified", manager, name, detail=f"{rel}: {exc.message}")
    if actual != expected_sha256.lower():
        return Difference("file-modified", manager, name, locked=f"sha256:{expected_sha256}",
                          installed=f"sha256:{actual}", detail=rel)
    return None


def _sha256_file(path: Path) -> str:
    from reprotrain import safeio

    digest = hashlib.sha256()
    with safeio.open_regular(path, limit=safeio.LIMITS["installed-file"], what="installed file") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_record_file(record: PipRecord, diffs: list[Difference], root: Path) -> int:
    """Re-hash the files a pip RECORD lists (urlsafe-base64 sha256, relative to site-packages)."""
    record_file = record.dist_info / "RECORD"
    from reprotrain import safeio
    from reprotrain.errors import ReprotrainError

    try:
        text = safeio.read_regular(record_file, limit=safeio.limit_for("record"), what="RECORD").decode(
            "utf-8", errors="replace")
    except safeio.Missing:
        return 0
    except (OSError, ReprotrainError) as exc:  # a directory named RECORD, a FIFO, too large: say so
        reason = exc.message if isinstance(exc, ReprotrainError) else (exc.strerror or type(exc).__name__)
        diffs.append(Difference("file-modified", "pip", record.name, detail=f"RECORD: unreadable ({reason})"))
        return 0
    site = record.dist_info.parent
    checked = 0
    # RECORD is CSV (PEP 376): a path with a comma is quoted, so split with the csv module, never on commas.
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as exc:  # a field over the csv module's size limit
        diffs.append(Difference("file-modified", "pip", record.name, detail=f"RECORD: unreadable ({exc})"))
        return 0
    for row in rows:
        if len(row) != 3 or not row[1].startswith("sha256="):
            continue  # RECORD itself, and .pyc files pip compiled, carry no hash
        rel, hash_field = row[0], row[1]
        padded = hash_field[len("sha256="):] + "=" * (-len(hash_field[len("sha256="):]) % 4)
        try:
            expected = base64.urlsafe_b64decode(padded).hex()
        except ValueError:
            diffs.append(Difference("file-modified", "pip", record.name, detail=f"{rel}: unreadable RECORD hash"))
            continue
        checked += 1
        diff = _check_file(site / rel, expected, "pip", record.name, rel, root)
        if diff:
            diffs.append(diff)
    return checked
