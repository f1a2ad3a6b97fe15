"""`reprotrain lock`: environment files -> one conda-lock.yml for every platform.

Two solvers, one output. With a conda, mamba or micromamba executable already on the machine,
conda-lock itself runs (it is handed that executable, so it never downloads one). Without one,
py-rattler solves and the lock is written through conda-lock's own models, writer and content hash,
so `conda-lock install`, micromamba and `reprotrain lock --check` read it like any other.

The lock specification (what the environment files ask for, per platform) and the virtual packages
are built here once and shared with the staleness check, so both hash exactly the same inputs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from reprotrain.envlock import DEFAULT_LOCKFILE, DEFAULT_PLATFORMS
from reprotrain.errors import InvalidDocumentError, ReprotrainError

if TYPE_CHECKING:
    from conda_lock.models.lock_spec import LockSpecification
    from conda_lock.virtual_package import FakeRepoData

SOLVERS = ("auto", "conda-lock", "rattler")
# The environment-file parser maps one PyPI name to conda (`pip` itself, when a pip section exists);
# this local mapping keeps that lookup offline instead of downloading conda-forge's full mapping.
PYPI_MAPPING = Path(__file__).with_name("pypi_to_conda_mapping.json")
_ENV_SUFFIXES = (".yml", ".yaml")


class SolveError(ReprotrainError):
    """The solver found no environment satisfying the specification (a real answer, exit 1)."""

    exit_code = 1


# --- inputs shared with the staleness check ---------------------------------------------------

def validate_environment_file(path: Path) -> dict:
    """Read one environment file or raise a one-line InvalidDocumentError naming it."""
    import yaml

    if path.suffix not in _ENV_SUFFIXES:
        raise InvalidDocumentError(
            "only conda environment files (.yml/.yaml) can be locked offline; for pyproject.toml or "
            "meta.yaml sources run conda-lock itself (it needs a network for the PyPI name mapping)", path=path)
    from reprotrain import safeio

    try:  # a regular file only, at most the environment-file limit
        text = safeio.read_text(path, limit=safeio.LIMITS["env"], what="environment file")
    except ReprotrainError as exc:
        raise InvalidDocumentError(exc.message, path=path) from None
    try:
        doc = safeio.load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]  # one line, even for a ReaderError
        raise InvalidDocumentError(f"not valid YAML{where}: {problem}", path=path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("dependencies"), list):
        raise InvalidDocumentError("not a conda environment file: no 'dependencies' list", path=path)
    channels = doc.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise InvalidDocumentError("'channels' must be a list of channel names or URLs", path=path)
    platforms = doc.get("platforms", [])
    if not isinstance(platforms, list) or not all(isinstance(p, str) for p in platforms):
        raise InvalidDocumentError("'platforms' must be a list of conda subdirs such as linux-64", path=path)
    return doc


def declared_platforms(env_files: Sequence[Path]) -> list[str]:
    """Platforms named by the files' `platforms:` keys (in order, deduplicated)."""
    seen: list[str] = []
    for path in env_files:
        for platform in validate_environment_file(path).get("platforms", []):
            if platform not in seen:
                seen.append(platform)
    return seen


def make_spec(env_files: Sequence[str | os.PathLike], platforms: Sequence[str]) -> LockSpecification:
    """conda-lock's LockSpecification for ENV_FILES on PLATFORMS (conda-lock's parser, selectors included)."""
    import logging

    from conda_lock.src_parser import make_lock_spec

    # conda-lock logs a warning for every line a platform selector filters out: expected, not news.
    logging.getLogger("conda_lock.src_parser.selectors").setLevel(logging.ERROR)
    paths = [Path(p) for p in env_files]
    if not paths:
        raise InvalidDocumentError("no environment file given (use -f ENVFILE)")
    for path in paths:
        validate_environment_file(path)
    try:
        return make_lock_spec(src_files=paths, platform_overrides=list(platforms),
                              mapping_url=PYPI_MAPPING.as_uri())
    except Exception as exc:  # conda-lock's parser raises anything from KeyError to pydantic errors
        names = ", ".join(str(p) for p in paths)
        raise InvalidDocumentError(f"conda-lock cannot parse the environment: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "),
                                   path=names) from None


def virtual_packages(spec_file: str | os.PathLike | None = None) -> FakeRepoData:
    """conda-lock's virtual package repository: its defaults, or a virtual-packages.yml.

    The object itself is what the content hash needs (its `__enter__` returns None, so it is never
    bound through `with ... as`).
    """
    from conda_lock.virtual_package import default_virtual_package_repodata, virtual_package_repo_from_specification

    if spec_file is None:
        return default_virtual_package_repodata()
    path = Path(spec_file)
    if not path.is_file():
        raise InvalidDocumentError("no such virtual-packages file", path=path)
    try:
        return virtual_package_repo_from_specification(path)
    except Exception as exc:  # a pydantic or YAML error from conda-lock
        raise InvalidDocumentError(f"not a conda-lock virtual-packages spec: {type(exc).__name__}", path=path) \
            from None


def resolve_platforms(env_files: Sequence[Path], platforms: Sequence[str] | None) -> list[str]:
    """-p wins, then the files' `platforms:` keys, then conda-lock's defaults (linux-64, osx-arm64, osx-64, win-64)."""
    if platforms:
        return list(dict.fromkeys(platforms))
    return declared_platforms(env_files) or list(DEFAULT_PLATFORMS)


# --- the conda-lock executable path -------------------------------------------------------------

def find_conda_executable() -> str | None:
    """An installed conda, mamba, micromamba or conda-standalone, or None. Never installs one."""
    from ensureconda import ensureconda

    found = ensureconda(mamba=True, micromamba=True, conda=True, conda_exe=True, no_install=True)
    return os.fspath(found) if found else None


def _lock_with_conda_lock(executable: str, env_files: Sequence[Path], platforms: Sequence[str],
                          lockfile: Path, virtual_package_spec: str | os.PathLike | None) -> None:
    command = [sys.executable, "-m", "conda_lock", "lock", "--conda", executable, "--kind", "lock",
               "--lockfile", str(lockfile)]
    for path in env_files:
        command += ["-f", str(path)]
    for platform in platforms:
        command += ["-p", platform]
    if virtual_package_spec is not None:
        command += ["--virtual-package-spec", os.fspath(virtual_package_spec)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise SolveError(f"conda-lock (with {executable}) failed: {tail[-1] if tail else 'no output'}",
                         path=lockfile)


# --- the py-rattler path -----------------------------------------------------------------------

def _rattler_virtual_packages(repo: FakeRepoData, platform: str) -> list:
    import rattler

    # conda-lock may list one virtual package twice (__osx 10.15 and 11.0); the solver sees the highest.
    best: dict[str, tuple] = {}
    for package, subdirs in repo.packages_by_subdir.items():
        if platform not in subdirs:
            continue
        version = rattler.Version(package.version)
        if package.name not in best or version > best[package.name][0]:
            best[package.name] = (version, package.build_string or "0")
    return [rattler.GenericVirtualPackage(rattler.PackageName(name), version, rattler.BuildString(build))
            for name, (version, build) in sorted(best.items())]


def _reject_pip(spec: LockSpecification, env_files: Sequence[Path]) -> None:
    pip = sorted({d.name for deps in spec.dependencies.values() for d in deps if d.manager == "pip"})
    if pip:
        raise InvalidDocumentError(
            f"pip dependencies ({', '.join(pip)}) need conda-lock's PyPI solver, which needs a conda, mamba or "
            "micromamba executable: install one and rerun `reprotrain lock` (it then runs conda-lock), or "
            "move these packages to conda dependencies", path=", ".join(str(p) for p in env_files))
    unsupported = sorted({d.name for deps in spec.dependencies.values() for d in deps
                          if d.manager == "conda" and type(d).__name__ != "VersionedDependency"})
    if unsupported:
        raise InvalidDocumentError(f"conda dependencies given as URLs or paths ({', '.join(unsupported)}) "
                                   "cannot be solved", path=", ".join(str(p) for p in env_files))


def _locked_dependency(record, platform: str):
    from conda_lock.interfaces.vendored_conda import MatchSpec
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency

    # The same reduction conda-lock applies to a conda solve: one merged version spec per dependency name.
    by_name: dict[str, list] = {}
    for depend in record.depends:
        matchspec = MatchSpec(depend)
        by_name.setdefault(matchspec.name, []).append(matchspec)
    dependencies = {}
    for name, matchspecs in by_name.items():
        merged = matchspecs[0] if len(matchspecs) == 1 else MatchSpec.merge(matchspecs)[0]
        dependencies[name] = merged.version.spec_str if merged.version is not None else ""
    return LockedDependency(
        name=record.name.normalized, version=str(record.version), manager="conda", platform=platform,
        dependencies=dependencies, url=str(record.url), build=str(record.build),
        hash=HashModel(md5=_hex(record.md5), sha256=_hex(record.sha256)))


def _hex(digest) -> str | None:
    if digest is None:
        return None
    return digest.hex() if isinstance(digest, (bytes, bytearray)) else str(digest)


def _solve_platform_with_rattler(spec: LockSpecification, platform: str, repo: FakeRepoData) -> list:
    import rattler
    from conda_lock.conda_solver import _to_match_spec
    from conda_lock.lockfile import apply_categories

    requested = {d.name: d for d in spec.dependencies[platform] if d.manager == "conda"}
    # conda's (lenient) MatchSpec reading: `conda env export`'s `click=8.1.8=pyh0_0` becomes `click ==8.1.8
    # pyh0_0`, which rattler's strict string parser refuses ("missing range specifier").
    match_specs = [rattler.MatchSpec(_to_match_spec(d.name, d.version, d.build, d.conda_channel), strict=False)
                   for d in requested.values()]
    try:
        records = asyncio.run(rattler.solve(
            sources=[channel.url for channel in spec.channels], specs=match_specs,
            platforms=[platform, "noarch"], virtual_packages=_rattler_virtual_packages(repo, platform),
            channel_relations="disabled"))
    except Exception as exc:  # rattler raises its own exception types for unsolvable specs / bad channels
        message = " ".join(str(exc).split())
        raise SolveError(f"{platform}: no solution: {message[:600]}") from None
    planned = {}
    for record in records:
        dependency = _locked_dependency(record, platform)
        planned[dependency.name] = dependency
    apply_categories(requested=requested, planned=planned, mapping_url=PYPI_MAPPING.as_uri())
    return list(planned.values())


def _write_lockfile(lockfile, path: Path) -> None:
    from conda_lock.lockfile import write_conda_lock_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # conda-lock's writer names the file in its header, so write the same name in a sibling temp dir
    # and rename: a crash never leaves a half-written lock.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".reprotrain-lock-") as tmp:
        staged = Path(tmp) / path.name
        write_conda_lock_file(lockfile, staged, metadata_choices=None)
        os.replace(staged, path)


def _lock_with_rattler(env_files: Sequence[Path], platforms: Sequence[str], lockfile_path: Path,
                       virtual_package_spec: str | os.PathLike | None) -> None:
    from conda_lock.common import relative_path
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.lockfile.v2prelim.models import LockMeta, Lockfile

    spec = make_spec(env_files, platforms)
    _reject_pip(spec, env_files)
    if not spec.channels:
        raise InvalidDocumentError("no channels: name at least one under 'channels:'",
                                   path=", ".join(str(p) for p in env_files))
    repo = virtual_packages(virtual_package_spec)
    packages = []
    for platform in spec.platforms:
        packages += _solve_platform_with_rattler(spec, platform, repo)
    lockfile = Lockfile(package=packages, metadata=LockMeta(
        content_hash=compute_content_hashes(spec, repo), channels=list(spec.channels),
        platforms=list(spec.platforms),
        sources=[relative_path(lockfile_path.resolve().parent, p.resolve()) for p in env_files]))
    _write_lockfile(lockfile, lockfile_path)


def lock(env_files: Sequence[str | os.PathLike], platforms: Sequence[str] | None = None,
         lockfile: str | os.PathLike = DEFAULT_LOCKFILE, solver: str = "auto",
         virtual_package_spec: str | os.PathLike | None = None) -> dict:
    """Lock ENV_FILES for PLATFORMS into LOCKFILE; returns what was written.

    solver: "auto" (conda-lock when an executable is installed, else py-rattler), "conda-lock"
    (refuse without an executable) or "rattler".
    """
    from reprotrain.envlock.lockfile import read_lockfile

    if solver not in SOLVERS:
        raise InvalidDocumentError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    paths = [Path(p) for p in env_files]
    if not paths:
        raise InvalidDocumentError("no environment file given (use -f ENVFILE)")
    for path in paths:
        validate_environment_file(path)
    chosen_platforms = resolve_platforms(paths, platforms)
    lockfile_path = Path(lockfile)
    executable = find_conda_executable() if solver != "rattler" else None
    if solver == "conda-lock" and executable is None:
        raise ReprotrainError("no conda, mamba or micromamba executable installed (reprotrain never downloads "
                              "one): install one, or use --solver rattler", exit_code=2)
    if executable is not None:
        _lock_with_conda_lock(executable, paths, chosen_platforms, lockfile_path, virtual_package_spec)
        used = f"conda-lock ({executable})"
    else:
        _lock_with_rattler(paths, chosen_platforms, lockfile_path, virtual_package_spec)
        used = "rattler"
    written = read_lockfile(lockfile_path)
    return {
        "lockfile": os.path.abspath(lockfile_path),
        "solver": used,
        "platforms": list(written.metadata.platforms),
        "packages": {p: sum(1 for d in written.package if d.platform == p) for p in written.metadata.platforms},
        "content_hash": dict(written.metadata.content_hash),
    }
