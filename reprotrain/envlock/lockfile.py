"""Reading conda-lock.yml files into conda-lock's own models, and what `reprotrain lock show` reports.

Every failure is a one-line `InvalidDocumentError` naming the file: a lock written by any conda-lock
release (1.x key order with `version` last, channels as plain strings, md5-only entries, pip entries,
several categories, mirror URLs) parses; anything else (an @EXPLICIT lock, an environment file, a JSON
schema, broken YAML) is rejected with what it is and what to do instead. The file's text is never
echoed into the error: lock files may carry credentials in URLs.

Two readers, one format. `load_lock()` is pure standard library plus PyYAML: it is what `env verify`,
`lock --check`, `lock show` and the fingerprint use, because importing conda-lock's package costs more
than half a second (its `__init__` imports its CLI). `read_lockfile()` validates with conda-lock's own
pydantic models, for callers that need those objects; `load_lock()` hands any file it cannot read to
it, so both reject the same files with the same one-line messages. Versions 1 (what conda-lock writes)
and 2 (conda-lock's in-memory model written out: `categories:` lists) are read; hash fields must be
hex digests of the right length.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprotrain.errors import InvalidDocumentError, ReprotrainError

if TYPE_CHECKING:  # conda-lock is imported lazily: it costs most of a second
    from conda_lock.lockfile.v2prelim.models import LockedDependency, Lockfile

# Conda archive extensions, longest first so `.tar.bz2` wins over `.bz2`-like suffixes.
_ARCHIVE_SUFFIXES = (".tar.bz2", ".conda")
TORCH_CONDA_NAMES = ("pytorch", "libtorch")
TORCH_PIP_NAME = "torch"


def read_lockfile(path: str | os.PathLike) -> Lockfile:
    """Parse a unified conda-lock.yml (version 1) into conda-lock's `Lockfile` model.

    Raises InvalidDocumentError (exit code 2) with a one-line reason for anything that is not one.
    """
    path = Path(path)
    return lockfile_from_document(_load_document(path), path)


def _load_document(path: Path) -> dict:
    """The lock's YAML mapping, after rejecting what is plainly another kind of document."""
    text = _read_text(path)
    if not text.strip():
        raise InvalidDocumentError("empty file, not a conda-lock.yml", path=path)
    if _is_explicit_lock(text):
        raise InvalidDocumentError(
            "an explicit per-platform lock (conda list --explicit format: package URLs), not a unified "
            "conda-lock.yml; reprotrain reads conda-lock.yml files (write one with `reprotrain lock`)", path=path)
    from reprotrain.envlock import fastyaml

    doc = fastyaml.parse(text)  # conda-lock's own layout, several times faster; None: anything else
    if doc is None:
        doc = _load_yaml(text, path)
    if not isinstance(doc, dict):
        raise InvalidDocumentError(
            f"not a conda-lock.yml: the document is a {type(doc).__name__}, not a mapping", path=path)
    _reject_other_documents(doc, path)
    return doc


def lockfile_from_document(doc: dict, path: str | os.PathLike) -> Lockfile:
    """Validate an already-loaded conda-lock document with conda-lock's models (v1 on disk, v2 in memory)."""
    from conda_lock.lockfile.v1.models import Lockfile as LockfileV1
    from conda_lock.lockfile.v2prelim.models import Lockfile as LockfileV2
    from conda_lock.lockfile.v2prelim.models import lockfile_v1_to_v2
    from pydantic import ValidationError

    doc = dict(doc)
    version = doc.pop("version", None)
    if version is None:
        raise InvalidDocumentError("no 'version' key: not a conda-lock.yml", path=path)
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise InvalidDocumentError(
            f"lock file version {version!r} is not supported (conda-lock writes version 1; version 2 is read "
            "too)", path=path)
    for key in ("metadata", "package"):
        if key not in doc:
            raise InvalidDocumentError(f"no '{key}' section: not a conda-lock.yml", path=path)
    try:
        if version == 2:
            model = LockfileV2.model_validate(doc)
        else:
            model = lockfile_v1_to_v2(LockfileV1.model_validate(doc))
    except ValidationError as exc:
        raise InvalidDocumentError(_first_validation_error(exc, doc), path=path) from None
    except (AssertionError, ValueError, TypeError) as exc:  # conda-lock's own v1->v2 invariants
        raise InvalidDocumentError(f"inconsistent package entries: {exc or type(exc).__name__}", path=path) \
            from None
    problem = _hash_format_problem(doc.get("package"))
    if problem:
        raise InvalidDocumentError(f"invalid conda-lock.yml: {problem}", path=path)
    return model


def _load_yaml(text: str, path: Path):
    import yaml

    try:
        from reprotrain import safeio

        return safeio.load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InvalidDocumentError(f"not valid YAML{where}: {problem}", path=path) from None


def _read_text(path: Path) -> str:
    from reprotrain import safeio

    try:  # a regular file only (never a FIFO or a device), at most the lock limit
        data = safeio.read_regular(path, limit=safeio.LIMITS["lock"], what="lock file")
    except safeio.Missing:
        raise InvalidDocumentError("no such file", path=path) from None
    except ReprotrainError as exc:
        raise InvalidDocumentError(exc.message, path=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidDocumentError("not a text file (not UTF-8), not a conda-lock.yml", path=path) from None


def _is_explicit_lock(text: str) -> bool:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            # The @EXPLICIT header, or (conda-lock's own test locks) a bare archive URL list.
            return stripped == "@EXPLICIT" or re.match(r"^[a-z][a-z0-9+.-]*://\S+$", stripped) is not None
    return False


def _reject_other_documents(doc: dict, path: Path) -> None:
    if "$schema" in doc or "definitions" in doc and "properties" in doc:
        raise InvalidDocumentError("a JSON schema, not a conda-lock.yml", path=path)
    if "dependencies" in doc and "package" not in doc:
        raise InvalidDocumentError(
            "an environment file, not a lock file: lock it with `reprotrain lock -f FILE`", path=path)
    if "subdirs" in doc and "package" not in doc:
        raise InvalidDocumentError("a conda-lock virtual-packages spec, not a lock file", path=path)


def _first_validation_error(exc: Any, doc: dict) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = list(first.get("loc", ()))
    where = ""
    if len(loc) >= 2 and loc[0] == "package" and isinstance(loc[1], int):
        entry = doc.get("package", [])[loc[1]] if isinstance(doc.get("package"), list) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"package[{loc[1]}]" + (f" ({name})" if name else "")
        rest = loc[2:]
    else:
        rest = loc
    field = ".".join(str(part) for part in rest)
    location = " ".join(part for part in (where, field) if part) or "document"
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid conda-lock.yml: {location}: {message}{more}"


# --- the light reader: no conda-lock import -------------------------------------------------------

SUPPORTED_VERSIONS = (1, 2)
_VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")
_GIT_COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")
_HEX = {"md5": re.compile(r"^[0-9a-fA-F]{32}$"), "sha256": re.compile(r"^[0-9a-fA-F]{64}$")}


@dataclass(frozen=True)
class LockChannel:
    url: str


@dataclass(frozen=True)
class LockHash:
    md5: str | None = None
    sha256: str | None = None


@dataclass
class LockEntry:
    """One locked package (v1 entries of several categories folded into one, as conda-lock does)."""

    name: str
    version: str
    manager: str
    platform: str
    url: str
    hash: LockHash
    build: str | None = None
    dependencies: dict = field(default_factory=dict)
    categories: set[str] = field(default_factory=set)


@dataclass
class LockMetadata:
    platforms: list[str]
    content_hash: dict[str, str]
    channels: list[LockChannel]
    sources: list[str]


@dataclass
class LockData:
    """What `load_lock()` returns: the attributes of conda-lock's `Lockfile` that reprotrain reads."""

    version: int
    metadata: LockMetadata
    package: list[LockEntry]


_METADATA_KEYS = {"content_hash", "channels", "platforms", "sources", "time_metadata", "git_metadata",
                  "inputs_metadata", "custom_metadata"}
_COMMON_PACKAGE_KEYS = {"name", "version", "manager", "platform", "dependencies", "url", "hash", "source", "build"}
_PACKAGE_KEYS = {1: _COMMON_PACKAGE_KEYS | {"category", "optional"}, 2: _COMMON_PACKAGE_KEYS | {"categories"}}


def _from_model(model) -> LockData:
    return LockData(version=2, metadata=LockMetadata(
        platforms=list(model.metadata.platforms), content_hash=dict(model.metadata.content_hash),
        channels=[LockChannel(c.url) for c in model.metadata.channels], sources=list(model.metadata.sources)),
        package=[LockEntry(name=p.name, version=p.version, manager=p.manager, platform=p.platform, url=p.url,
                           hash=LockHash(p.hash.md5, p.hash.sha256), build=p.build,
                           dependencies=dict(p.dependencies), categories=set(p.categories))
                 for p in model.package])


class _Unreadable(Exception):
    """The light reader met something it does not vouch for: conda-lock's models give the message."""


def load_lock(path: str | os.PathLike) -> LockData:
    """Read a conda-lock.yml (version 1 or 2) without importing conda-lock.

    Raises InvalidDocumentError (exit 2) with the same one-line reasons as `read_lockfile()`, plus a
    check of every hash field's format.
    """
    path = Path(path)
    doc = _load_document(path)
    try:
        return _lock_data(doc)
    except _Unreadable:
        # conda-lock's models either reject the file with the precise message or accept a form this
        # reader does not vouch for: then their result is used.
        return _from_model(read_lockfile(path))
    except _HashFormat as exc:
        raise InvalidDocumentError(f"invalid conda-lock.yml: {exc}", path=path) from None


class _HashFormat(Exception):
    pass


def _hash_format_problem(packages) -> str | None:
    for index, package in enumerate(packages if isinstance(packages, list) else ()):
        hashes = package.get("hash") if isinstance(package, dict) else None
        if not isinstance(hashes, dict):
            continue
        url = package.get("url")
        vcs = isinstance(url, str) and url.startswith(_VCS_PREFIXES)
        for algorithm, pattern in _HEX.items():
            value = hashes.get(algorithm)
            if vcs and algorithm == "sha256" and isinstance(value, str) and _GIT_COMMIT.match(value):
                continue  # conda-lock records a pip VCS dependency's commit id in the sha256 field
            if value is not None and not (isinstance(value, str) and pattern.match(value)):
                digits = 32 if algorithm == "md5" else 64
                return (f"package[{index}] ({package.get('name')}) hash.{algorithm} is not {digits} hex digits")
    return None


def _text(value) -> str:
    if not isinstance(value, str):
        raise _Unreadable
    return value


def _lock_data(doc: dict) -> LockData:
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise _Unreadable
    metadata, packages = doc.get("metadata"), doc.get("package")
    if not isinstance(metadata, dict) or not isinstance(packages, list):
        raise _Unreadable
    if set(doc) - {"version", "metadata", "package"}:
        raise _Unreadable  # conda-lock's models forbid extra keys
    if set(metadata) - _METADATA_KEYS:
        raise _Unreadable
    platforms = metadata.get("platforms")
    content_hash = metadata.get("content_hash")
    channels = metadata.get("channels")
    sources = metadata.get("sources")
    if not (isinstance(platforms, list) and all(isinstance(p, str) for p in platforms)):
        raise _Unreadable
    if not (isinstance(content_hash, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in content_hash.items())):
        raise _Unreadable
    if not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
        raise _Unreadable
    if not isinstance(channels, list):
        raise _Unreadable
    channel_urls = []
    for channel in channels:
        if isinstance(channel, str):
            channel_urls.append(LockChannel(channel))
        elif isinstance(channel, dict) and isinstance(channel.get("url"), str):
            channel_urls.append(LockChannel(channel["url"]))
        else:
            raise _Unreadable
    problem = _hash_format_problem(packages)
    if problem:
        raise _HashFormat(problem)
    entries: dict[tuple[str, str, str], LockEntry] = {}
    for package in packages:
        if not isinstance(package, dict):
            raise _Unreadable
        manager = package.get("manager")
        if manager not in ("conda", "pip"):
            raise _Unreadable
        hashes = package.get("hash")
        if not isinstance(hashes, dict) or set(hashes) - {"md5", "sha256"}:
            raise _Unreadable
        md5, sha256 = hashes.get("md5"), hashes.get("sha256")
        if manager == "conda" and md5 is None:  # conda-lock's rule: conda entries carry an md5
            raise _Unreadable
        if set(package) - _PACKAGE_KEYS[version]:
            raise _Unreadable
        build = package.get("build")
        dependencies = package.get("dependencies", {})
        if build is not None and not isinstance(build, str) or not isinstance(dependencies, dict):
            raise _Unreadable
        if version == 2:
            categories = package.get("categories", [])
            if not (isinstance(categories, list) and all(isinstance(c, str) for c in categories)):
                raise _Unreadable
            categories = set(categories)
        else:
            category = package.get("category", "main")
            if not isinstance(category, str) or not isinstance(package.get("optional"), bool):
                raise _Unreadable
            categories = {category}
        url = _text(package.get("url"))
        if not url or url.strip() != url:
            raise _Unreadable
        entry = LockEntry(name=_text(package.get("name")), version=str(_text(package.get("version"))),
                          manager=manager, platform=_text(package.get("platform")), url=url,
                          hash=LockHash(md5, sha256), build=build, dependencies=dependencies,
                          categories=categories)
        key = (entry.manager, entry.name, entry.platform)
        previous = entries.get(key)
        if previous is None:
            entries[key] = entry
        elif (previous.version, previous.url, previous.hash) == (entry.version, entry.url, entry.hash):
            previous.categories |= entry.categories
        else:
            raise _Unreadable  # the same package twice with different content: conda-lock says how
    return LockData(version=version, metadata=LockMetadata(
        platforms=list(platforms), content_hash=dict(content_hash), channels=channel_urls,
        sources=list(sources)), package=list(entries.values()))


# --- what a lock pins -------------------------------------------------------------------------------

def build_string(package: LockedDependency) -> str | None:
    """The build string: the entry's `build` field, or (older conda-lock) parsed from the archive name."""
    if package.build:
        return package.build
    if package.manager != "conda":
        return None
    filename = package.url.rsplit("/", 1)[-1].split("#", 1)[0].split("?", 1)[0]
    for suffix in _ARCHIVE_SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            prefix = f"{package.name}-{package.version}-"
            if stem.startswith(prefix):
                return stem[len(prefix):]
            return stem.rsplit("-", 1)[-1] if stem.count("-") >= 2 else None
    return None


def packages_for_platform(lockfile: Lockfile, platform: str) -> list[LockedDependency]:
    return [p for p in lockfile.package if p.platform == platform]


def _find(packages: list[LockedDependency], name: str, manager: str = "conda") -> LockedDependency | None:
    for package in packages:
        if package.manager == manager and package.name == name:
            return package
    return None


_PYTORCH_CHANNEL_BUILD = re.compile(r"cuda(?P<cuda>\d+(?:\.\d+)+)(?:_cudnn(?P<cudnn>\d+(?:\.\d+)*))?")
_CONDA_FORGE_BUILD = re.compile(r"(?:^|_)cuda(?P<digits>\d{3})(?!\d)")
_PIP_LOCAL_CUDA = re.compile(r"\+cu(?P<digits>\d{3,4})$")


def _cuda_from_digits(digits: str) -> str:
    # conda-forge `cuda118`, pip `+cu121`: the last digit is the minor version.
    return f"{int(digits[:-1])}.{digits[-1]}"


def torch_build_info(torch: LockedDependency | None) -> dict:
    """What the torch entry itself says: variant (cuda/cpu), CUDA and cuDNN it was built against."""
    if torch is None:
        return {"variant": None, "cuda": None, "cudnn": None}
    if torch.manager == "pip":
        match = _PIP_LOCAL_CUDA.search(torch.version)
        if match:
            return {"variant": "cuda", "cuda": _cuda_from_digits(match["digits"]), "cudnn": None}
        return {"variant": "cpu" if "+cpu" in torch.version else None, "cuda": None, "cudnn": None}
    build = build_string(torch) or ""
    match = _PYTORCH_CHANNEL_BUILD.search(build)
    if match:
        return {"variant": "cuda", "cuda": match["cuda"], "cudnn": match["cudnn"]}
    match = _CONDA_FORGE_BUILD.search(build)
    if match:
        return {"variant": "cuda", "cuda": _cuda_from_digits(match["digits"]), "cudnn": None}
    if "cpu" in build:
        return {"variant": "cpu", "cuda": None, "cudnn": None}
    return {"variant": None, "cuda": None, "cudnn": None}


def _entry(package: LockedDependency | None) -> dict | None:
    if package is None:
        return None
    return {"name": package.name, "version": package.version, "build": build_string(package),
            "manager": package.manager}


def platform_pins(lockfile: Lockfile, platform: str) -> dict:
    """What LOCKFILE pins on PLATFORM for Python, PyTorch, CUDA and cuDNN.

    `python`, `torch`, `cuda`, `cudnn` are the single answers (strings or None) a fingerprint is
    compared with: torch's own build string wins for CUDA/cuDNN (it is what torch was compiled
    against), then pytorch-cuda, cuda-version, cudatoolkit; the package entries are under `packages`.
    """
    packages = packages_for_platform(lockfile, platform)
    python = _find(packages, "python")
    torch = next((p for name in TORCH_CONDA_NAMES if (p := _find(packages, name)) is not None), None)
    torch_pip = _find(packages, TORCH_PIP_NAME, manager="pip")
    torch_chosen = torch or torch_pip
    built = torch_build_info(torch_chosen)
    mutex = _find(packages, "pytorch-mutex")
    cuda_entries = {name: _entry(_find(packages, name))
                    for name in ("pytorch-cuda", "cuda-version", "cudatoolkit", "cuda-cudart")}
    cudnn_entry = _entry(_find(packages, "cudnn"))
    variant = built["variant"] or (build_string(mutex) if mutex is not None else None)
    if variant is None and torch_chosen is not None and torch_chosen.manager == "conda":
        variant = "cpu"  # a torch build that names no CUDA (pytorch channel `py3.10_0`, osx) is a CPU build
    cuda = built["cuda"]
    for name in ("pytorch-cuda", "cuda-version", "cudatoolkit"):
        if cuda is None and cuda_entries[name] is not None and variant != "cpu":
            cuda = _major_minor(cuda_entries[name]["version"])
    cudnn = built["cudnn"] or (cudnn_entry["version"] if cudnn_entry and variant != "cpu" else None)
    return {
        "platform": platform,
        "python": python.version if python is not None else None,
        "torch": torch_chosen.version if torch_chosen is not None else None,
        "torch_manager": torch_chosen.manager if torch_chosen is not None else None,
        "torch_variant": variant,
        "cuda": cuda,
        "cudnn": cudnn,
        "packages": {
            "python": _entry(python),
            "pytorch": _entry(torch),
            "torch (pip)": _entry(torch_pip),
            "pytorch-mutex": _entry(mutex),
            **cuda_entries,
            "cudnn": cudnn_entry,
        },
    }


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def summarize(lockfile: Lockfile, path: str | os.PathLike, platform: str | None = None) -> dict:
    """The `reprotrain lock show` document: platforms, package counts, and per-platform pins."""
    platforms = list(lockfile.metadata.platforms)
    if platform is not None and platform not in platforms:
        raise InvalidDocumentError(
            f"platform {platform} is not in the lock (it has {', '.join(platforms) or 'none'})", path=path)
    shown = [platform] if platform is not None else platforms
    per_platform = {}
    for name in shown:
        packages = packages_for_platform(lockfile, name)
        per_platform[name] = {
            "conda_packages": sum(1 for p in packages if p.manager == "conda"),
            "pip_packages": sum(1 for p in packages if p.manager == "pip"),
            "content_hash": lockfile.metadata.content_hash.get(name),
            **{k: v for k, v in platform_pins(lockfile, name).items() if k != "platform"},
        }
    return {
        "file": os.path.abspath(path),
        "version": 1,
        "platforms": platforms,
        "channels": [channel.url for channel in lockfile.metadata.channels],
        "sources": list(lockfile.metadata.sources),
        "categories": sorted({c for p in lockfile.package for c in p.categories}),
        "per_platform": per_platform,
    }
