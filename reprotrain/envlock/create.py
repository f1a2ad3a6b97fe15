"""`reprotrain env create`: install the locked environment for this platform, checking every archive hash.

With a conda, mamba or micromamba executable on PATH, `conda-lock install` does the work (it checks
hashes itself). Without one, py-rattler installs the prefix. py-rattler does not check archive hashes
for `file://` URLs, so every conda archive is first streamed once into a staging directory in 1 MiB
blocks (memory stays bounded whatever the archive's size: PyTorch packages are gigabytes), its md5 and
sha256 computed while it streams and compared with the lock, and rattler installs that verified copy;
conda-meta then names the locked URL, not the staging copy. Archives download in parallel
(FETCH_WORKERS threads), each retried on network errors (FETCH_ATTEMPTS tries, backing off); a hash
mismatch is never retried. pip entries are installed with pip `--require-hashes` into the new prefix's
site-packages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reprotrain.envlock.prefix import current_platform
from reprotrain.envlock.verify import LockedEntry, VerifyReport, locked_entries, verify_environment
from reprotrain import safeio
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


BLOCK = 1 << 20
FETCH_WORKERS = 8
FETCH_ATTEMPTS = 3
FETCH_BACKOFF_S = 0.5


@dataclass(frozen=True)
class VerifiedArchive:
    path: Path
    size: int
    md5: bytes
    sha256: bytes


def _shown(url: str) -> str:
    # Never echo the URL's query or credentials: print scheme, host and path only.
    parsed = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parsed.scheme, parsed.hostname or "", parsed.path, "", ""))


def _open(url: str):
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        # A regular file only (a file:// URL in a lock must not name a FIFO or a device); finite by construction.
        return safeio.open_regular(urllib.request.url2pathname(parsed.path), limit=safeio.LIMITS["installed-file"],
                                   what="package archive")
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - URLs come from the lock


def _stream_once(entry: LockedEntry, target: Path) -> VerifiedArchive:
    md5, sha256, size = hashlib.md5(), hashlib.sha256(), 0
    with _open(entry.url) as source, open(target, "wb") as sink:
        while True:
            block = source.read(BLOCK)
            if not block:
                break
            md5.update(block)
            sha256.update(block)
            size += len(block)
            sink.write(block)
    return VerifiedArchive(target, size, md5.digest(), sha256.digest())


def fetch_verified(entry: LockedEntry, directory: Path) -> VerifiedArchive:
    """Stream ENTRY's archive into DIRECTORY, hashing as it streams; refuse it unless it is the locked one."""
    if not entry.md5 and not entry.sha256:
        raise ArchiveHashMismatch(f"the lock records no hash for {entry.name}: refusing to install it unchecked")
    target = directory / _file_name(entry.url)
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        try:
            archive = _stream_once(entry, target)
            break
        except OSError as exc:
            target.unlink(missing_ok=True)
            parsed = urllib.parse.urlsplit(entry.url)
            permanent = parsed.scheme == "file" or (isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500)
            if permanent or attempt == FETCH_ATTEMPTS:
                raise ReprotrainError(f"cannot fetch {_shown(entry.url)}"
                                      f"{f' after {attempt} attempts' if attempt > 1 else ''}: "
                                      f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}",
                                      exit_code=2) from None
            time.sleep(FETCH_BACKOFF_S * 2 ** (attempt - 1))
    for algorithm in ("md5", "sha256"):
        expected = getattr(entry, algorithm)
        if expected and getattr(archive, algorithm).hex() != expected.lower():
            target.unlink(missing_ok=True)
            raise ArchiveHashMismatch(
                f"archive of {entry.name} {entry.version} does not match the lock's {algorithm} "
                f"(tampered or corrupted download); nothing was installed", path=_file_name(entry.url))
    return archive


def fetch_all(entries: list[LockedEntry], directory: Path, workers: int = FETCH_WORKERS) -> list[VerifiedArchive]:
    """Every archive, in parallel; the first failure in lock order is raised (nothing is installed then)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(entries))),
                            thread_name_prefix="reprotrain-fetch") as pool:
        futures = [pool.submit(fetch_verified, entry, directory) for entry in entries]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _file_name(url: str) -> str:
    return urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]


def _rattler_install(entries: list[LockedEntry], prefix: Path, platform: str, cache: Path,
                     verified_dir: Path) -> None:
    import rattler

    # Check every archive before installing any: a tampered package leaves no half-built prefix.
    archives = fetch_all(entries, verified_dir)
    records = []
    locked_urls: dict[str, LockedEntry] = {}
    for entry, archive in zip(entries, archives):
        package_record = _package_record(rattler, archive)
        channel = entry.url[: entry.url.rfind("/", 0, entry.url.rfind("/")) + 1]
        records.append(rattler.RepoDataRecord(package_record, archive.path.name, archive.path.as_uri(), channel))
        locked_urls[f"{package_record.name.normalized}-{package_record.version}-{package_record.build}"] = entry
    prefix.mkdir(parents=True, exist_ok=True)
    asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=cache, show_progress=False,
                                platform=rattler.Subdir(platform), execute_link_scripts=False))
    _record_locked_urls(prefix, locked_urls)


def _package_record(rattler, archive: VerifiedArchive):
    """The package's own metadata (info/index.json inside the verified archive) with the verified hashes."""
    index = rattler.IndexJson.from_package_archive(archive.path)
    return rattler.PackageRecord(
        name=index.name, version=index.version, build=index.build, build_number=index.build_number,
        subdir=index.subdir, arch=index.arch, platform=index.platform, noarch=index.noarch,
        depends=list(index.depends), constrains=list(index.constrains), license=index.license,
        license_family=index.license_family, size=archive.size, sha256=archive.sha256, md5=archive.md5)


def _record_locked_urls(prefix: Path, locked: dict[str, LockedEntry]) -> None:
    # rattler wrote the staging copy's URL; the environment came from the locked URL.
    for record_file in (prefix / "conda-meta").glob("*.json"):
        entry = locked.get(record_file.stem)
        if entry is None:
            continue
        doc = json.loads(safeio.read_text(record_file, limit=safeio.LIMITS["conda-meta"], what="conda-meta record"))
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
