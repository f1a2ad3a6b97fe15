"""conda-lock's content hash of one environment file, computed without importing conda-lock.

`reprotrain lock --check` must answer "fresh" in well under a second, and importing conda-lock's package
alone costs more than half a second (its `__init__` imports its CLI). conda-lock's hash is a sha256 over a
JSON serialisation of the parsed specification (channels, one spec per dependency, the virtual packages):
this module reproduces that serialisation for the environment files whose parse it can reproduce
exactly (one file; plain channel names or credential-free URLs; string dependencies in the common conda
spec forms; no pip section, selectors, categories or pip repositories; conda-lock's default virtual
packages, vendored from conda-lock 4.0.3 in `default_virtual_packages.json`). For anything else `hashes()`
returns None and the caller uses conda-lock itself. tests/test_envlock_content_hash.py checks the two
agree on every real environment file and on a corpus of spec forms.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import urlparse, urlunparse

VIRTUAL_PACKAGES = Path(__file__).with_name("default_virtual_packages.json")

_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
_VERSION = r"[0-9A-Za-z_.*+!]+"
_CONSTRAINT = r"(?:[<>]=?|==|!=|~=)?" + _VERSION
_SPEC_LIST = _CONSTRAINT + r"(?:[,|]" + _CONSTRAINT + r")*"
_BUILD = r"[A-Za-z0-9_.*+]+"
_SPEC = re.compile(
    rf"^(?:(?P<channel>[A-Za-z0-9_\-]+)::)?(?P<name>{_NAME})"
    rf"(?:"
    rf"(?P<empty>)$"
    rf"|=(?P<fuzzy>{_VERSION})$"
    rf"|==(?P<exact>{_VERSION})$"
    rf"|=(?P<pinned>{_VERSION})=(?P<pinned_build>{_BUILD})$"
    rf"|(?P<attached>(?:[<>]=?|!=|~=){_VERSION}(?:[,|]{_CONSTRAINT})*)$"
    rf"| (?P<spaced>{_SPEC_LIST})(?: (?P<spaced_build>{_BUILD}))?$"
    rf")")


class _Unsupported(Exception):
    pass


def _dependency(spec: str) -> dict:
    match = _SPEC.match(spec.strip())
    if match is None:
        raise _Unsupported(spec)
    build = None
    if match["empty"] is not None:
        version = ""
    elif match["fuzzy"] is not None:
        fuzzy = match["fuzzy"]
        if any(c in fuzzy for c in "+!") or fuzzy.count("*") > (1 if fuzzy.endswith(".*") else 0):
            raise _Unsupported(spec)
        version = fuzzy if fuzzy.endswith("*") else f"{fuzzy}.*"
    elif match["exact"] is not None:
        version = match["exact"]
        if "*" in version:
            raise _Unsupported(spec)
    elif match["pinned"] is not None:
        version, build = match["pinned"], match["pinned_build"]
    elif match["attached"] is not None:
        version = match["attached"]
    else:
        version, build = match["spaced"], match["spaced_build"]
    if version and not (version == "*" or re.match(r"^(?:[<>]=?|==|!=|~=)?[0-9*]", version)):
        raise _Unsupported(spec)  # versions that do not start with a digit: conda's parser decides
    if "==" in version[2:] or version.startswith("=="):
        raise _Unsupported(spec)
    return {"name": match["name"].lower(), "manager": "conda", "category": "main", "extras": [], "markers": None,
            "version": version, "build": build, "conda_channel": match["channel"], "hash": None}


def _channel_json(channel: str) -> str:
    if "://" in channel:
        parsed = urlparse(channel)
        if "$" in channel or "@" in parsed.netloc or "/t/" in channel or urlunparse(parsed) != channel:
            raise _Unsupported(channel)  # credentials and tokens: conda-lock maps them to env vars
    elif not re.match(r"^[A-Za-z0-9_.\-]+$", channel):
        raise _Unsupported(channel)
    return json.dumps({"url": channel, "used_env_vars": []}, separators=(",", ":"), ensure_ascii=False)


def _specification(doc: dict, text: str) -> tuple[list[str], list[dict]]:
    if re.search(r"#\s*\[", text):
        raise _Unsupported("selectors")
    if set(doc) - {"name", "channels", "dependencies", "platforms", "prefix", "variables"}:
        raise _Unsupported("keys")
    channels = [c for c in (doc.get("channels") or []) if c != "nodefaults"]
    if not all(isinstance(c, str) for c in channels) or len(set(channels)) != len(channels):
        raise _Unsupported("channels")
    dependencies: dict[str, dict] = {}
    for spec in doc.get("dependencies") or []:
        if not isinstance(spec, str):
            raise _Unsupported("pip or mapping")
        dependency = _dependency(spec)
        dependencies.pop(dependency["name"], None)
        dependencies[dependency["name"]] = dependency  # conda-lock: the last spec of a name wins
    return [_channel_json(c) for c in channels], sorted(dependencies.values(), key=lambda d: d["name"])


def _virtual_packages() -> dict:
    return json.loads(VIRTUAL_PACKAGES.read_text(encoding="utf-8"))


def _reinsert_spurious_build_number(repodata: dict) -> dict:
    result = copy.deepcopy(repodata)
    for subdir in result.values():
        packages = subdir.get("packages") if isinstance(subdir, dict) else None
        if packages is None:
            continue
        for key, package in list(packages.items()):
            if package["build_string"]:
                package["build"] = f"{package['build_string']}_{package['build_number']}"
                new_key = f"{package['name']}-{package['version']}-{package['build_string']}_{package['build_number']}.tar.bz2"
                packages[new_key] = package
                del packages[key]
    return result


_OSX_10_15 = {"name": "__osx", "version": "10.15", "build_string": "", "build_number": 0, "noarch": "", "depends": [],
              "timestamp": 1577854800000, "package_type": "virtual_system", "build": "0", "subdir": "osx-64"}


def _toggle_osx_10_15(repodata: dict) -> dict:
    result = copy.deepcopy(repodata)
    packages = result["osx-64"]["packages"]
    if "__osx-10.15-0.tar.bz2" in packages:
        del packages["__osx-10.15-0.tar.bz2"]
    else:
        packages["__osx-10.15-0.tar.bz2"] = dict(_OSX_10_15)
    return result


def _digest(channels: list[str], specs: list[dict], repodata: dict, platform: str, remove_new_nulls: bool) -> str:
    serialised_specs = []
    for spec in specs:
        spec = dict(spec)
        if remove_new_nulls and spec.get("markers") is None:
            spec.pop("markers")
        serialised_specs.append(spec)
    content = {"channels": channels, "specs": serialised_specs,
               "virtual_package_hash": {"noarch": repodata.get("noarch", {}), platform: repodata.get(platform, {})}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def hashes(env_files, platforms, virtual_package_spec=None) -> tuple[dict[str, str], dict[str, set[str]]] | None:
    """(conda-lock's content hash per platform, every hash variant conda-lock accepts per platform), or None
    when this file is outside what this module reproduces exactly."""
    import yaml

    if virtual_package_spec is not None or len(env_files) != 1:
        return None
    from reprotrain import safeio
    from reprotrain.errors import ReprotrainError

    path = Path(env_files[0])
    try:
        text = safeio.read_text(path, limit=safeio.limit_for("env"), what="environment file")
        doc = safeio.load_yaml(text)
        if not isinstance(doc, dict):
            return None
        channels, specs = _specification(doc, text)
    except (_Unsupported, OSError, ValueError, yaml.YAMLError, ReprotrainError):
        return None  # the slow path reports unreadable files with its own messages
    repodata = _virtual_packages()
    current, accepted = {}, {}
    reinserted = _reinsert_spurious_build_number(repodata)
    for platform in platforms:
        current[platform] = _digest(channels, specs, reinserted, platform, remove_new_nulls=True)
        variants = [repodata]
        osx_11 = repodata.get("osx-64", {}).get("packages", {}).get("__osx-11.0-0.tar.bz2")
        if platform == "osx-64" and osx_11 == {**_OSX_10_15, "version": "11.0"}:
            variants.append(_toggle_osx_10_15(repodata))
        variants += [_reinsert_spurious_build_number(v) for v in list(variants)]
        accepted[platform] = {_digest(channels, specs, v, platform, remove_new_nulls=nulls)
                              for v in variants for nulls in (False, True)}
    return current, accepted
