"""What is installed in a conda prefix: conda-meta records and pip dist-info directories.

Pure standard library (plus the JSON files conda, mamba and rattler write), so reading a
300-package prefix takes milliseconds and never imports torch, rattler or conda-lock.
"""

from __future__ import annotations

import io
import json
import os
import platform as _platform
import re
import stat
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reprotrain import safeio
from reprotrain.errors import InvalidDocumentError, ReprotrainError

_NORMALISE = re.compile(r"[-_.]+")


def normalise_pip_name(name: str) -> str:
    """PEP 503 normalised project name (`Foo_Bar` -> `foo-bar`)."""
    return _NORMALISE.sub("-", name).lower()


# conda and rattler both write conda-meta records pretty-printed with a two-space indent, so a
# top-level key is exactly `\n  "key": ` while nested keys (paths_data, link) sit deeper. Finding
# those few keys with bytes.find avoids parsing megabytes of file lists for large packages.
_TOP_LEVEL_KEYS = ("name", "version", "build", "sha256", "md5")


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
    # Regular files only, capped (reprotrain.safeio's rules, inlined for speed): O_NONBLOCK so that a FIFO
    # cannot hang the open, fstat on the open descriptor, at most the conda-meta limit.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > safeio.LIMITS["conda-meta"]:
            raise ValueError(f"larger than the {safeio.LIMITS['conda-meta']} byte limit")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > safeio.LIMITS["conda-meta"]:
                raise ValueError(f"larger than the {safeio.LIMITS['conda-meta']} byte limit")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_conda_record(path: str) -> dict:
    """name, version, build and archive hash of one conda-meta record (raises ValueError if unreadable)."""
    data = _read_bytes(path)
    try:
        record = {key: _top_level_value(data, key) for key in _TOP_LEVEL_KEYS}
    except (ValueError, RecursionError):
        record = {}
    if not record.get("name") or not record.get("version") or record.get("build") is None:
        # Not in the usual two-space layout (hand-written or minified): parse it fully.
        try:
            doc = json.loads(data)
        except RecursionError:
            raise ValueError("nested too deeply") from None
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


def conda_subdir(system: str | None = None, machine: str | None = None) -> str | None:
    """The conda subdir (linux-64, osx-arm64, win-64, ...) of this interpreter; None when conda has none."""
    system = (system or _platform.system()).lower()
    machine = (machine or _platform.machine()).lower()
    os_name = {"linux": "linux", "darwin": "osx", "windows": "win"}.get(system)
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64", "ppc64le": "ppc64le",
            "s390x": "s390x", "i386": "32", "i686": "32", "x86": "32", "armv7l": "armv7l"}.get(machine)
    if os_name is None or arch is None:
        return None
    if os_name == "linux" and arch == "arm64":
        arch = "aarch64"
    if os_name in ("osx", "win") and arch == "aarch64":
        arch = "arm64"
    return f"{os_name}-{arch}"


def current_platform() -> str:
    """The conda subdir of this machine, or `<sys.platform>-<machine>` where conda defines none."""
    return conda_subdir() or f"{sys.platform}-{_platform.machine().lower()}"


def default_prefix() -> Path:
    """The active conda environment ($CONDA_PREFIX), else the running interpreter's prefix."""
    return Path(os.environ.get("CONDA_PREFIX") or sys.prefix)


def envs_dirs() -> list[Path]:
    """Where conda looks for `-n NAME`: $CONDA_ENVS_PATH (or $CONDA_ENVS_DIRS), the root prefix's envs/,
    the envs/ beside the active environment, then ~/.conda/envs."""
    found: list[Path] = []
    for variable in ("CONDA_ENVS_PATH", "CONDA_ENVS_DIRS"):
        found += [Path(p).expanduser() for p in os.environ.get(variable, "").split(os.pathsep) if p]
    root = root_prefix()
    if root is not None:
        found.append(root / "envs")
    active = os.environ.get("CONDA_PREFIX")
    if active:
        active_path = Path(active)
        found.append(active_path.parent if active_path.parent.name == "envs" else active_path / "envs")
    found.append(Path.home() / ".conda" / "envs")
    return list(dict.fromkeys(found))


def root_prefix() -> Path | None:
    """conda's base environment: $CONDA_ROOT / $MAMBA_ROOT_PREFIX, else the one the active environment lives in."""
    for variable in ("CONDA_ROOT", "MAMBA_ROOT_PREFIX", "CONDA_ROOT_PREFIX"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    active = os.environ.get("CONDA_PREFIX")
    if active:
        path = Path(active)
        return path.parent.parent if path.parent.name == "envs" else path
    return None


def resolve_prefix(prefix: str | os.PathLike | None = None, name: str | None = None,
                   must_exist: bool = True) -> Path:
    """The environment `-p PREFIX` / `-n NAME` names, resolved as conda does; neither: the active one.

    With MUST_EXIST false (env create), `-n NAME` is the first envs directory's NAME.
    """
    if prefix is not None and name is not None:
        raise ReprotrainError("give -p/--prefix or -n/--name, not both", path=str(prefix), exit_code=2)
    if prefix is not None:
        return Path(prefix)
    if name is None:
        return default_prefix()
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ReprotrainError("an environment name is a plain name; use -p for a path", path=name, exit_code=2)
    if name == "base":
        root = root_prefix()
        if root is None:
            raise ReprotrainError("no base environment known (no $CONDA_ROOT, $MAMBA_ROOT_PREFIX or active "
                                  "environment)", path=name, exit_code=2)
        return root
    dirs = envs_dirs()
    for directory in dirs:
        if (directory / name / "conda-meta").is_dir():
            return directory / name
    if not must_exist:
        return dirs[0] / name
    raise ReprotrainError(f"no environment named {name} in {', '.join(str(d) for d in dirs)}", path=name,
                          exit_code=2)


@dataclass(frozen=True)
class CondaRecord:
    """One conda-meta/*.json record."""

    name: str
    version: str
    build: str
    subdir: str | None
    url: str | None
    md5: str | None
    sha256: str | None
    record_file: Path
    # paths_data["paths"] entries as written by the installer (`_path`, `sha256`, `sha256_in_prefix`, ...)
    paths: tuple[dict, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class PipRecord:
    """One *.dist-info directory not owned by a conda package."""

    name: str  # normalised
    version: str
    dist_info: Path
    installer: str | None


@dataclass
class PrefixContents:
    prefix: Path
    conda: dict[str, CondaRecord]
    pip: dict[str, PipRecord]

    def platform(self) -> str | None:
        """The prefix's platform, from its packages' subdirs (None when only noarch packages are installed)."""
        subdirs = Counter(r.subdir for r in self.conda.values() if r.subdir and r.subdir != "noarch")
        return subdirs.most_common(1)[0][0] if subdirs else None


def read_prefix(prefix: str | os.PathLike) -> PrefixContents:
    """Read every conda-meta record and every pip-installed dist-info of PREFIX."""
    prefix = Path(prefix)
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        raise ReprotrainError("not a conda environment (no conda-meta directory)", path=prefix, exit_code=2)
    conda: dict[str, CondaRecord] = {}
    conda_files: set[str] = set()
    for record_file in sorted(meta.glob("*.json")):
        try:
            doc = json.loads(safeio.read_text(record_file, limit=safeio.LIMITS["conda-meta"],
                                              what="conda-meta record"))
        except (OSError, ValueError, RecursionError) as exc:
            raise InvalidDocumentError(f"unreadable conda-meta record ({exc.__class__.__name__}: {exc})",
                                       path=record_file) from None
        record = _conda_record(doc, record_file)
        conda[record.name] = record
        conda_files.update(doc.get("files") or ())
    return PrefixContents(prefix=prefix, conda=conda, pip=_read_pip(prefix, conda_files))


def _conda_record(doc, record_file: Path) -> CondaRecord:
    """A conda-meta record's fields, each checked for its type (a record is input: exit 2 naming the field)."""
    def bad(field: str, expected: str, value) -> InvalidDocumentError:
        return InvalidDocumentError(f"conda-meta record field {field!r} must be {expected}, got "
                                    f"{type(value).__name__}", path=record_file)

    if not isinstance(doc, dict):
        raise InvalidDocumentError(f"conda-meta record is not a JSON object (got {type(doc).__name__})",
                                   path=record_file)
    for key in ("name", "version"):
        if key not in doc:
            raise InvalidDocumentError(f"conda-meta record has no {key!r}", path=record_file)
    if not isinstance(doc["name"], str) or not doc["name"]:
        raise bad("name", "a non-empty string", doc["name"])
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, (str, int, float)):
        raise bad("version", "a string", version)
    for key in ("build", "subdir", "url", "md5", "sha256"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise bad(key, "a string", doc[key])
    files = doc.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        raise bad("files", "a list of strings", files)
    paths_data = doc.get("paths_data")
    if paths_data is not None and not isinstance(paths_data, dict):
        raise bad("paths_data", "an object", paths_data)
    paths = (paths_data or {}).get("paths") or []
    if not isinstance(paths, list):
        raise bad("paths_data.paths", "a list", paths)
    for index, entry in enumerate(paths):
        if not isinstance(entry, dict):
            raise bad(f"paths_data.paths[{index}]", "an object", entry)
        if not isinstance(entry.get("_path"), str) or not entry["_path"]:
            raise bad(f"paths_data.paths[{index}]._path", "a non-empty string", entry.get("_path"))
        for key in ("sha256", "sha256_in_prefix", "path_type"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise bad(f"paths_data.paths[{index}].{key}", "a string", entry[key])
    return CondaRecord(name=doc["name"], version=str(version), build=doc.get("build") or "",
                       subdir=doc.get("subdir"), url=doc.get("url"), md5=doc.get("md5"), sha256=doc.get("sha256"),
                       record_file=record_file, paths=tuple(paths))


def site_packages_dirs(prefix: Path) -> list[Path]:
    """Every site-packages directory of PREFIX (POSIX `lib/pythonX.Y/`, Windows `Lib/`)."""
    dirs = sorted(prefix.glob("lib/python*/site-packages"))
    windows = prefix / "Lib" / "site-packages"
    if windows.is_dir():
        dirs.append(windows)
    return dirs


def _read_pip(prefix: Path, conda_files: set[str]) -> dict[str, PipRecord]:
    found: dict[str, PipRecord] = {}
    for site in site_packages_dirs(prefix):
        for dist_info in sorted(site.glob("*.dist-info")):
            metadata = dist_info / "METADATA"
            rel = metadata.relative_to(prefix).as_posix()
            installer = _read_first_line(dist_info / "INSTALLER")
            # Conda packages of Python projects ship dist-info too; those belong to the conda record.
            if rel in conda_files or installer == "conda":
                continue
            name, version = _name_version(metadata)
            if name is None or version is None:
                raise InvalidDocumentError("dist-info METADATA without Name or Version", path=metadata)
            found[normalise_pip_name(name)] = PipRecord(normalise_pip_name(name), version, dist_info, installer)
    return found


def _read_first_line(path: Path) -> str | None:
    if not os.path.lexists(path):
        return None
    data = safeio.read_regular(path, limit=safeio.LIMITS["record"], what="dist-info file")  # regular files only
    return data.decode("utf-8", errors="replace").strip() or None


def _name_version(metadata: Path) -> tuple[str | None, str | None]:
    name = version = None
    try:
        with io.TextIOWrapper(safeio.open_regular(metadata, limit=safeio.LIMITS["record"], what="METADATA file"),
                              encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break  # the headers end at the first blank line
                if line.startswith("Name:"):
                    name = line[5:].strip()
                elif line.startswith("Version:"):
                    version = line[8:].strip()
    except OSError as exc:
        raise InvalidDocumentError(f"unreadable dist-info METADATA ({exc.strerror})", path=metadata) from None
    return name, version
