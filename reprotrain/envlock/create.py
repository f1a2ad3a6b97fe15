"""`reprotrain env create`: install the locked environment for this platform, checking every archive hash.

With a conda, mamba or micromamba executable on PATH, `conda-lock install` does the work (it checks
hashes itself). Without one, py-rattler installs the prefix. py-rattler does not check archive hashes
for `file://` URLs, so every conda archive is first read once into a staging directory, its md5 (and
sha256 when locked) compared with the lock, and rattler installs that verified copy; conda-meta then
names the locked URL, not the staging copy. pip entries are installed with pip `--require-hashes`
into the new prefix's site-packages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reprotrain.envlock.prefix import current_platform
from reprotrain.envlock.verify import LockedEntry, VerifyReport, locked_entries, verify_environment
from reprotrain.errors import ReprotrainError


class ArchiveHashMismatch(ReprotrainError):
    """A downloaded or local archive is not the one the lock pins (exit 1: refused)."""

    exit_code = 1


@dataclass
class CreateReport:
    prefix: str
    platform: str
    installer: str  # "conda-lock" or "rattler"
    conda_packages: int = 0
    pip_packages: int = 0
    verify: VerifyReport | None = field(default=None)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["verify"] = self.verify.to_dict() if self.verify else None
        return doc


def create_environment(lockfile: str | os.PathLike, prefix: str | os.PathLike, platform: str | None = None,
                       categories: set[str] | None = None, cache_dir: str | os.PathLike | None = None,
                       use_conda: bool = True) -> CreateReport:
    """Install LOCKFILE's PLATFORM (default: this machine's) packages into PREFIX, then verify it.

    USE_CONDA=False forces the py-rattler path even when a conda executable exists.
    """
    platform = platform or current_platform()
    prefix = Path(prefix).resolve()
    entries = locked_entries(lockfile, platform, categories)  # validates the lock before touching anything
    if prefix.exists() and any(prefix.iterdir()):
        raise ReprotrainError("prefix exists and is not empty; choose a new directory", path=prefix, exit_code=2)
    executable = _find_conda() if use_conda else None
    if executable is not None:
        _conda_lock_install(executable, lockfile, prefix, categories)
        report = CreateReport(str(prefix), platform, "conda-lock")
    else:
        report = CreateReport(str(prefix), platform, "rattler")
        with tempfile.TemporaryDirectory(prefix="reprotrain-create-") as scratch:
            cache = Path(cache_dir) if cache_dir is not None else Path(scratch) / "pkgs"
            _rattler_install([e for e in entries if e.manager == "conda"], prefix, platform, cache,
                             Path(scratch) / "verified")
            _pip_install([e for e in entries if e.manager == "pip"], prefix, Path(scratch) / "wheels")
    report.conda_packages = sum(e.manager == "conda" for e in entries)
    report.pip_packages = sum(e.manager == "pip" for e in entries)
    report.verify = verify_environment(lockfile, prefix, platform=platform, categories=categories)
    return report


def _find_conda() -> str | None:
    """A conda/mamba/micromamba executable already installed, never downloading one."""
    from reprotrain.envlock.solve import find_conda_executable

    found = find_conda_executable()
    return os.fspath(found) if found else None


def _conda_lock_install(executable: str, lockfile, prefix: Path, categories: set[str] | None) -> None:
    command = [sys.executable, "-m", "conda_lock", "install", "--conda", executable, "--prefix", str(prefix)]
    if categories:
        for category in sorted(categories - {"main"}):
            command += ["--extras", category]
    command.append(os.fspath(lockfile))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReprotrainError(f"conda-lock install failed ({result.returncode}): {last}", path=lockfile,
                              exit_code=1)


def _read_archive(url: str) -> bytes:
    parsed = urllib.parse.urlsplit(url)
    try:
        if parsed.scheme == "file":
            return Path(urllib.request.url2pathname(parsed.path)).read_bytes()
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - URLs come from the lock
            return response.read()
    except OSError as exc:
        # Never echo the URL's query or credentials: print scheme, host and path only.
        shown = urllib.parse.urlunsplit((parsed.scheme, parsed.hostname or "", parsed.path, "", ""))
        raise ReprotrainError(f"cannot fetch {shown}: {getattr(exc, 'strerror', None) or exc}",
                              exit_code=2) from None


def _check_hashes(entry: LockedEntry, data: bytes) -> None:
    for algorithm in ("md5", "sha256"):
        expected = getattr(entry, algorithm)
        if expected and hashlib.new(algorithm, data).hexdigest() != expected.lower():
            raise ArchiveHashMismatch(
                f"archive of {entry.name} {entry.version} does not match the lock's {algorithm} "
                f"(tampered or corrupted download); nothing was installed", path=_file_name(entry.url))
    if not entry.md5 and not entry.sha256:
        raise ArchiveHashMismatch(f"the lock records no hash for {entry.name}: refusing to install it unchecked")


def _file_name(url: str) -> str:
    return urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]


def _rattler_install(entries: list[LockedEntry], prefix: Path, platform: str, cache: Path,
                     verified_dir: Path) -> None:
    import rattler

    verified_dir.mkdir(parents=True, exist_ok=True)
    records = []
    locked_urls: dict[str, LockedEntry] = {}
    # Check every archive before installing any: a tampered package leaves no half-built prefix.
    for entry in entries:
        data = _read_archive(entry.url)
        _check_hashes(entry, data)
        file_name = _file_name(entry.url)
        local = verified_dir / file_name
        local.write_bytes(data)
        package_record = _package_record(rattler, local, data)
        channel = entry.url[: entry.url.rfind("/", 0, entry.url.rfind("/")) + 1]
        records.append(rattler.RepoDataRecord(package_record, file_name, local.as_uri(), channel))
        locked_urls[f"{package_record.name.normalized}-{package_record.version}-{package_record.build}"] = entry
    prefix.mkdir(parents=True, exist_ok=True)
    asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=cache, show_progress=False,
                                platform=rattler.Subdir(platform), execute_link_scripts=False))
    _record_locked_urls(prefix, locked_urls)


def _package_record(rattler, archive: Path, data: bytes):
    """The package's own metadata (info/index.json inside the verified archive) with the verified hashes."""
    index = rattler.IndexJson.from_package_archive(archive)
    return rattler.PackageRecord(
        name=index.name, version=index.version, build=index.build, build_number=index.build_number,
        subdir=index.subdir, arch=index.arch, platform=index.platform, noarch=index.noarch,
        depends=list(index.depends), constrains=list(index.constrains), license=index.license,
        license_family=index.license_family, size=len(data), sha256=hashlib.sha256(data).digest(),
        md5=hashlib.md5(data).digest())


def _record_locked_urls(prefix: Path, locked: dict[str, LockedEntry]) -> None:
    # rattler wrote the staging copy's URL; the environment came from the locked URL.
    for record_file in (prefix / "conda-meta").glob("*.json"):
        entry = locked.get(record_file.stem)
        if entry is None:
            continue
        doc = json.loads(record_file.read_text(encoding="utf-8"))
        doc["url"] = entry.url
        doc["channel"] = entry.url[: entry.url.rfind("/", 0, entry.url.rfind("/")) + 1]
        doc.pop("extracted_package_dir", None)  # the scratch cache is gone once create returns
        record_file.write_text(json.dumps(doc, indent=1), encoding="utf-8")


def _pip_install(entries: list[LockedEntry], prefix: Path, wheel_dir: Path) -> None:
    if not entries:
        return
    from reprotrain.envlock.prefix import read_prefix

    python = read_prefix(prefix).conda.get("python")
    if python is None:
        raise ReprotrainError("the lock has pip packages but no conda python to install them into",
                              path=prefix, exit_code=2)
    major_minor = ".".join(python.version.split(".")[:2])
    site = prefix / ("Lib/site-packages" if sys.platform == "win32" else f"lib/python{major_minor}/site-packages")
    requirements = []
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if not entry.sha256:
            raise ArchiveHashMismatch(f"the lock records no sha256 for pip package {entry.name}: refusing to "
                                      f"install it unchecked")
        requirements.append(f"{entry.name} @ {entry.url} --hash=sha256:{entry.sha256}")
    requirements_file = wheel_dir / "requirements.txt"
    requirements_file.write_text("\n".join(requirements) + "\n")
    # --no-deps: the lock already lists every dependency; --require-hashes: pip refuses a tampered wheel.
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
               "--require-hashes", "--only-binary=:all:", "--python-version", major_minor, "--target", str(site),
               "-r", str(requirements_file)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        hash_failure = any("HASHES" in line or "hash" in line.lower() for line in lines)
        reason = next((line.strip() for line in lines if "ERROR" in line), lines[-1] if lines else "no output")
        raise (ArchiveHashMismatch if hash_failure else ReprotrainError)(
            f"pip install of the lock's pip packages failed: {reason}", path=prefix)
