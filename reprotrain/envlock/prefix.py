"""What is installed in a conda prefix: conda-meta records and pip dist-info directories.

Pure standard library (plus the JSON files conda, mamba and rattler write), so reading a
300-package prefix takes milliseconds and never imports torch, rattler or conda-lock.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reprotrain.errors import InvalidDocumentError, ReprotrainError

_NORMALISE = re.compile(r"[-_.]+")


def normalise_pip_name(name: str) -> str:
    """PEP 503 normalised project name (`Foo_Bar` -> `foo-bar`)."""
    return _NORMALISE.sub("-", name).lower()


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
            doc = json.loads(record_file.read_text(encoding="utf-8"))
            name, version, build = doc["name"], str(doc["version"]), str(doc.get("build", ""))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidDocumentError(f"unreadable conda-meta record ({exc.__class__.__name__}: {exc})",
                                       path=record_file) from None
        paths = tuple((doc.get("paths_data") or {}).get("paths") or ())
        conda[name] = CondaRecord(name=name, version=version, build=build, subdir=doc.get("subdir"),
                                  url=doc.get("url"), md5=doc.get("md5"), sha256=doc.get("sha256"),
                                  record_file=record_file, paths=paths)
        conda_files.update(doc.get("files") or ())
    return PrefixContents(prefix=prefix, conda=conda, pip=_read_pip(prefix, conda_files))


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
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _name_version(metadata: Path) -> tuple[str | None, str | None]:
    name = version = None
    try:
        with metadata.open(encoding="utf-8", errors="replace") as handle:
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
