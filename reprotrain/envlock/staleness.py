"""`reprotrain lock --check`: is a conda-lock.yml still the lock of its inputs? Offline, no solve.

conda-lock stores one content hash per platform: a sha256 over the parsed specification (channels,
specs, pip repositories) and the virtual packages. Recomputing it from the current environment files,
and accepting every hash variant conda-lock itself accepts, answers "stale or not" exactly. The
common environment files are hashed by content_hash.py without importing conda-lock (its package
costs half a second to import); everything else by conda-lock's own functions. The lock does not record its inputs, so "what changed" is a diagnosis: channel
changes, requested packages missing from the lock, and locked versions or builds that no longer satisfy
a spec are named; anything else is reported as a specification change the hash detected.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Sequence

from reprotrain.envlock import DEFAULT_LOCKFILE
from reprotrain.errors import InvalidDocumentError


def check(lockfile: str | os.PathLike = DEFAULT_LOCKFILE, env_files: Sequence[str | os.PathLike] | None = None,
          platforms: Sequence[str] | None = None,
          virtual_package_spec: str | os.PathLike | None = None) -> dict:
    """Compare LOCKFILE's content hashes with those of its inputs.

    env_files default to the lock's `metadata.sources` (relative to the lock's folder). platforms
    default to the lock's platforms plus any the files declare. Returns {"stale": bool, "platforms":
    {platform: {"status": "fresh"|"stale"|"not locked"|"not declared", ...}}}; raises
    InvalidDocumentError (exit 2) for unreadable inputs.
    """
    from reprotrain.envlock import content_hash
    from reprotrain.envlock.lockfile import load_lock
    from reprotrain.envlock.solve import declared_platforms

    lockfile_path = Path(lockfile)
    locked = load_lock(lockfile_path)
    if env_files:
        sources = [Path(p) for p in env_files]
    else:
        if not locked.metadata.sources:
            raise InvalidDocumentError("the lock names no source files: give them with -f ENVFILE",
                                       path=lockfile_path)
        sources = [lockfile_path.parent / s for s in locked.metadata.sources]
    locked_platforms = list(locked.metadata.platforms)
    if platforms:
        wanted = list(dict.fromkeys(platforms))
        undeclared: list[str] = []
    else:
        declared = declared_platforms(sources)
        wanted = list(dict.fromkeys([*locked_platforms, *declared]))
        # A platform the files stopped declaring is only stale when the files declare platforms at all.
        undeclared = [p for p in locked_platforms if declared and p not in declared]

    to_hash = [p for p in wanted if p not in undeclared]
    # conda-lock's hash without importing conda-lock where reprotrain reproduces it exactly (content_hash.py);
    # conda-lock itself otherwise, and for the diagnosis of a stale platform.
    fast = content_hash.hashes(sources, to_hash, virtual_package_spec) if to_hash else ({}, {})
    spec = None
    if fast is None:
        from conda_lock.content_hash import backwards_compatible_content_hashes, compute_content_hashes

        from reprotrain.envlock.solve import make_spec, virtual_packages

        spec = make_spec(sources, to_hash)
        repo = virtual_packages(virtual_package_spec)
        current = compute_content_hashes(spec, repo)
        accepted = {p: backwards_compatible_content_hashes(spec, repo, p) for p in to_hash}
    else:
        current, accepted = fast

    report: dict[str, dict] = {}
    for platform in wanted:
        entry: dict = {"locked_hash": locked.metadata.content_hash.get(platform),
                       "input_hash": current.get(platform), "changes": []}
        if platform in undeclared:
            entry["status"] = "not declared"
            entry["changes"].append("locked, but the environment files no longer declare this platform")
        elif platform not in locked_platforms or entry["locked_hash"] is None:
            entry["status"] = "not locked"
            entry["changes"].append("requested, but the lock has no such platform")
        elif entry["locked_hash"] in accepted[platform]:
            entry["status"] = "fresh"
        else:
            entry["status"] = "stale"
            if spec is None:
                from reprotrain.envlock.solve import make_spec

                spec = make_spec(sources, to_hash)
            entry["changes"] = _diagnose(locked, spec, platform)
        report[platform] = entry
    return {
        "lockfile": os.path.abspath(lockfile_path),
        "sources": [str(s) for s in sources],
        "stale": any(e["status"] != "fresh" for e in report.values()),
        "platforms": report,
    }


def _diagnose(locked, spec, platform: str) -> list[str]:
    """Name what visibly changed between the inputs and what the lock holds on PLATFORM."""
    changes: list[str] = []
    locked_channels = [c.url for c in locked.metadata.channels]
    spec_channels = [c.url for c in spec.channels]
    if locked_channels != spec_channels:
        changes.append(f"channels changed: locked {locked_channels}, inputs {spec_channels}")
    entries = {(p.manager, _norm(p.name, p.manager)): p for p in locked.package if p.platform == platform}
    for dep in spec.dependencies.get(platform, []):
        entry = entries.get((dep.manager, _norm(dep.name, dep.manager)))
        label = dep.name if dep.manager == "conda" else f"{dep.name} (pip)"
        if entry is None:
            changes.append(f"{label}: requested but not in the lock (added)")
            continue
        reason = _unsatisfied(dep, entry)
        if reason:
            changes.append(f"{label}: {reason}")
    if not changes:
        changes.append("the specification changed (a spec removed or loosened, a category, pip repository or "
                       "virtual package changed); the lock does not record its inputs, so re-run `reprotrain lock`")
    return changes


def _norm(name: str, manager: str) -> str:
    if manager == "pip":
        from packaging.utils import canonicalize_name

        return canonicalize_name(name)
    return name.lower()


def _unsatisfied(dep, entry) -> str | None:
    """Why the locked ENTRY does not satisfy the requested DEP, or None when it does (or cannot tell)."""
    version = getattr(dep, "version", None)
    if dep.manager == "conda":
        import rattler

        from reprotrain.envlock.lockfile import build_string

        if version and version.strip() not in ("", "*"):
            try:
                if not rattler.VersionSpec(version).matches(rattler.Version(entry.version)):
                    return f"locked {entry.version} does not satisfy {version}"
            except Exception:  # a spec rattler cannot parse: the hash already said stale
                return None
        build = getattr(dep, "build", None)
        locked_build = build_string(entry)
        if build and locked_build and not fnmatch.fnmatchcase(locked_build, build):
            return f"locked build {locked_build} does not match {build}"
        return None
    if version and version.strip() not in ("", "*"):
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            if not SpecifierSet(version).contains(entry.version, prereleases=True):
                return f"locked {entry.version} does not satisfy {version}"
        except InvalidSpecifier:
            return None
    return None
