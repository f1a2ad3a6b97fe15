"""`reprotrain env export`: what a live prefix holds, written without any conda executable.

Reads conda-meta records (and conda's `conda-meta/history`), pip's dist-info, and writes one of:

    environment   an environment.yml: channels from the records, the platform named under `platforms:`,
                  `name=version=build` specs (`--no-builds`: `name=version`; `--from-history`: only the
                  specs that were explicitly requested), pip packages under `pip:`
    explicit      an @EXPLICIT per-platform lock (`conda list --explicit --md5` format: URL#md5)
    conda-lock    a unified conda-lock.yml for this one platform, written with conda-lock's models

The conda-lock format's content hash is the hash of the environment file `--format environment` writes,
so `reprotrain lock --check -f exported.yml --lockfile exported-lock.yml` says fresh.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from reprotrain import safeio
from reprotrain.envlock.prefix import CondaRecord, PrefixContents, current_platform, read_prefix
from reprotrain.errors import InvalidDocumentError, ReprotrainError


def _read(path: Path, kind: str, what: str) -> str:
    return safeio.read_regular(path, limit=safeio.limit_for(kind), what=what).decode("utf-8", errors="replace")

FORMATS = ("environment", "explicit", "conda-lock")
_HISTORY_SPECS = re.compile(r"^#\s*(?P<action>\w+)\s+specs:\s*(?P<specs>.*)$")


@dataclass(frozen=True)
class PipPackage:
    name: str
    version: str
    url: str | None
    sha256: str | None


def _channel(record: CondaRecord) -> str | None:
    if not record.url:
        return None
    url = record.url
    return url[: url.rfind("/", 0, url.rfind("/")) + 1].rstrip("/") or None


def _spec_name(spec: str) -> str:
    text = spec.strip().split("::")[-1]
    return re.split(r"[\s=<>!~\[]", text, maxsplit=1)[0].lower()


def requested_specs(contents: PrefixContents) -> list[str]:
    """The explicitly requested specs: conda's `conda-meta/history` when it records any, else the records'
    `requested_spec(s)` (what rattler and pixi write)."""
    specs: dict[str, str] = {}
    history = contents.prefix / "conda-meta" / "history"
    try:
        lines = _read(history, "conda-meta", "conda history").splitlines() if history.exists() else []
    except (OSError, ReprotrainError):
        lines = []
    for line in lines:
        match = _HISTORY_SPECS.match(line.strip())
        if not match:
            continue
        try:
            listed = ast.literal_eval(match["specs"].strip())
        except (ValueError, SyntaxError):
            listed = [s.strip() for s in match["specs"].split(",") if s.strip()]
        if isinstance(listed, str):
            listed = [listed]
        action = match["action"].lower()
        for spec in listed if isinstance(listed, (list, tuple)) else ():
            if not isinstance(spec, str) or not spec.strip():
                continue
            name = _spec_name(spec)
            if action in ("remove", "uninstall"):
                specs.pop(name, None)
            elif action in ("install", "create", "update", "neutered"):
                specs[name] = spec.strip()
    seen_history = any(_HISTORY_SPECS.match(line.strip()) for line in lines)
    if not seen_history:  # conda's history is authoritative; rattler/pixi record requested specs per package
        for record in contents.conda.values():
            for spec in _record_requested(record):
                specs.setdefault(_spec_name(spec), spec)
    # a spec whose package is no longer installed is not part of the environment
    return [spec for name, spec in sorted(specs.items()) if name in contents.conda]


def _record_requested(record: CondaRecord) -> list[str]:
    try:
        doc = json.loads(_read(record.record_file, "conda-meta", "conda-meta record"))
    except (OSError, ValueError, ReprotrainError):
        return []
    found = list(doc.get("requested_specs") or [])
    if isinstance(doc.get("requested_spec"), str) and doc["requested_spec"]:
        found.append(doc["requested_spec"])
    return [s for s in found if isinstance(s, str)]


def _record_json(record: CondaRecord) -> dict:
    try:
        return json.loads(_read(record.record_file, "conda-meta", "conda-meta record"))
    except (OSError, ValueError) as exc:
        raise InvalidDocumentError(f"unreadable conda-meta record ({type(exc).__name__})",
                                   path=record.record_file) from None


def _pip_packages(contents: PrefixContents) -> list[PipPackage]:
    packages = []
    for name, record in sorted(contents.pip.items()):
        url = sha256 = None
        direct = record.dist_info / "direct_url.json"
        try:
            doc = json.loads(_read(direct, "record", "direct_url.json")) if direct.exists() else {}
        except (OSError, ValueError, ReprotrainError):
            doc = {}
        if isinstance(doc, dict) and isinstance(doc.get("url"), str):
            url = doc["url"]
            hashes = (doc.get("archive_info") or {}).get("hashes") or {}
            sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
            if sha256 is None:
                legacy = (doc.get("archive_info") or {}).get("hash") or ""
                sha256 = legacy.split("=", 1)[1] if legacy.startswith("sha256=") else None
        packages.append(PipPackage(name, record.version, url, sha256))
    return packages


def channels_of(contents: PrefixContents) -> list[str]:
    seen: list[str] = []
    for record in sorted(contents.conda.values(), key=lambda r: r.name):
        channel = _channel(record)
        if channel and channel not in seen:
            seen.append(channel)
    return seen


def environment_document(contents: PrefixContents, name: str | None = None, no_builds: bool = False,
                         from_history: bool = False) -> dict:
    platform = contents.platform() or current_platform()
    if from_history:
        dependencies: list = requested_specs(contents)
    else:
        dependencies = []
        for record in sorted(contents.conda.values(), key=lambda r: r.name):
            spec = f"{record.name}={record.version}" if no_builds else f"{record.name}={record.version}={record.build}"
            dependencies.append(spec)
    pip = [f"{p.name}=={p.version}" for p in _pip_packages(contents)]
    if pip and not from_history:
        dependencies.append({"pip": pip})
    return {"name": name or contents.prefix.name, "channels": channels_of(contents), "platforms": [platform],
            "dependencies": dependencies}


def explicit_text(contents: PrefixContents) -> str:
    platform = contents.platform() or current_platform()
    lines = ["# This file may be used to create an environment using:",
             "# $ conda create --name <env> --file <this file>", f"# platform: {platform}",
             "# written by reprotrain env export", "@EXPLICIT"]
    for record in sorted(contents.conda.values(), key=lambda r: r.name):
        if not record.url:
            raise ReprotrainError(f"{record.name} records no URL: it cannot go into an explicit lock",
                                  path=record.record_file, exit_code=2)
        lines.append(f"{record.url}#{record.md5}" if record.md5 else record.url)
    for package in _pip_packages(contents):
        if package.url and package.sha256:
            lines.append(f"# pip {package.name} @ {package.url}#sha256={package.sha256}")
        else:
            lines.append(f"# pip {package.name}=={package.version}")
    return "\n".join(lines) + "\n"


def conda_lock_document(contents: PrefixContents, environment: dict, work_dir: Path) -> str:
    """A unified conda-lock.yml for the prefix's platform, through conda-lock's models and writer."""
    import yaml
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.interfaces.vendored_conda import MatchSpec
    from conda_lock.lockfile import write_conda_lock_file
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency, LockMeta, Lockfile

    from reprotrain.envlock.solve import make_spec, virtual_packages

    platform = environment["platforms"][0]
    env_file = work_dir / "environment.yml"
    env_file.write_text(yaml.safe_dump(environment, sort_keys=False))
    packages = []
    for record in sorted(contents.conda.values(), key=lambda r: r.name):
        doc = _record_json(record)
        dependencies: dict[str, str] = {}
        for depend in doc.get("depends") or ():
            spec = MatchSpec(depend)
            dependencies[spec.name] = spec.version.spec_str if spec.version is not None else ""
        if not record.url or not record.md5:
            raise ReprotrainError(f"{record.name} records no URL or md5: it cannot be locked",
                                  path=record.record_file, exit_code=2)
        packages.append(LockedDependency(
            name=record.name, version=record.version, manager="conda", platform=platform,
            dependencies=dependencies, url=record.url, build=record.build,
            hash=HashModel(md5=record.md5, sha256=record.sha256), categories={"main"}))
    for package in _pip_packages(contents):
        if not (package.url and package.sha256):
            raise ReprotrainError(f"pip package {package.name} records no URL and sha256 (direct_url.json): "
                                  "it cannot be locked", path=contents.prefix, exit_code=2)
        packages.append(LockedDependency(name=package.name, version=package.version, manager="pip",
                                         platform=platform, url=package.url, hash=HashModel(sha256=package.sha256),
                                         categories={"main"}))
    spec = make_spec([env_file], [platform])
    lockfile = Lockfile(package=packages, metadata=LockMeta(
        content_hash=compute_content_hashes(spec, virtual_packages(None)), channels=list(spec.channels),
        platforms=[platform], sources=[]))
    target = work_dir / "conda-lock.yml"
    write_conda_lock_file(lockfile, target, metadata_choices=None)
    return target.read_text(encoding="utf-8")


def export_environment(prefix: str | os.PathLike, fmt: str = "environment", no_builds: bool = False,
                       from_history: bool = False, name: str | None = None) -> str:
    """The text of PREFIX exported in FMT (see the module docstring)."""
    import tempfile

    import yaml

    if fmt not in FORMATS:
        raise InvalidDocumentError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt != "environment" and (no_builds or from_history):
        raise ReprotrainError("--no-builds and --from-history apply to --format environment only", exit_code=2)
    contents = read_prefix(prefix)
    if not contents.conda:
        raise ReprotrainError("the prefix has no conda packages to export", path=prefix, exit_code=2)
    if fmt == "explicit":
        return explicit_text(contents)
    environment = environment_document(contents, name=name, no_builds=no_builds, from_history=from_history)
    if fmt == "environment":
        return yaml.safe_dump(environment, sort_keys=False)
    with tempfile.TemporaryDirectory(prefix="reprotrain-export-") as tmp:
        return conda_lock_document(contents, environment_document(contents, name=name), Path(tmp))
