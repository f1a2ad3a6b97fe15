"""Reading conda-lock.yml files into conda-lock's own models, and what `reprotrain lock show` reports.

Every failure is a one-line `InvalidDocumentError` naming the file: a lock written by any conda-lock
release (1.x key order with `version` last, channels as plain strings, md5-only entries, pip entries,
several categories, mirror URLs) parses; anything else (an @EXPLICIT lock, an environment file, a JSON
schema, broken YAML) is rejected with what it is and what to do instead. The file's text is never
echoed into the error: lock files may carry credentials in URLs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprotrain.errors import InvalidDocumentError

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
    import yaml

    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise InvalidDocumentError("empty file, not a conda-lock.yml", path=path)
    if _is_explicit_lock(text):
        raise InvalidDocumentError(
            "an explicit per-platform lock (conda list --explicit format: package URLs), not a unified "
            "conda-lock.yml; reprotrain reads conda-lock.yml files (write one with `reprotrain lock`)", path=path)
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InvalidDocumentError(f"not valid YAML{where}: {problem}", path=path) from None
    if not isinstance(doc, dict):
        raise InvalidDocumentError(
            f"not a conda-lock.yml: the document is a {type(doc).__name__}, not a mapping", path=path)
    _reject_other_documents(doc, path)
    return lockfile_from_document(doc, path)


def lockfile_from_document(doc: dict, path: str | os.PathLike) -> Lockfile:
    """Validate an already-loaded conda-lock document with conda-lock's models (v1 on disk, v2 in memory)."""
    from conda_lock.lockfile.v1.models import Lockfile as LockfileV1
    from conda_lock.lockfile.v2prelim.models import lockfile_v1_to_v2
    from pydantic import ValidationError

    doc = dict(doc)
    version = doc.pop("version", None)
    if version is None:
        raise InvalidDocumentError("no 'version' key: not a conda-lock.yml", path=path)
    if version != 1:
        raise InvalidDocumentError(
            f"lock file version {version!r} is not supported (conda-lock 4.0.3 writes version 1)", path=path)
    for key in ("metadata", "package"):
        if key not in doc:
            raise InvalidDocumentError(f"no '{key}' section: not a conda-lock.yml", path=path)
    try:
        return lockfile_v1_to_v2(LockfileV1.model_validate(doc))
    except ValidationError as exc:
        raise InvalidDocumentError(_first_validation_error(exc, doc), path=path) from None
    except (AssertionError, ValueError, TypeError) as exc:  # conda-lock's own v1->v2 invariants
        raise InvalidDocumentError(f"inconsistent package entries: {exc or type(exc).__name__}", path=path) \
            from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidDocumentError("no such file", path=path) from None
    except IsADirectoryError:
        raise InvalidDocumentError("is a directory, not a lock file", path=path) from None
    except OSError as exc:
        raise InvalidDocumentError(f"cannot read: {exc.strerror or exc}", path=path) from None
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
