"""The fingerprint's `lock` section, and a checkpoint fingerprint checked against what a lock pins.

Called by the fingerprint and checkpoint layers; never imports torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from reprotrain.envlock.prefix import current_platform
from reprotrain.errors import ReprotrainError


def lock_section(lockfile: str, prefix: str | None = None, verify: bool = True) -> dict:
    """Name LOCKFILE, its sha256, its content hash for this platform, and whether PREFIX matches it.

    `matches` is None when VERIFY is false or the environment cannot be compared (no conda-meta,
    platform not in the lock); `content_hash` is None when the lock has no entry for this platform.
    """
    from reprotrain.envlock.lockfile import load_lock
    from reprotrain.envlock.verify import verify_environment

    path = Path(lockfile).resolve()
    from reprotrain import safeio

    data = safeio.read_regular(path, limit=safeio.LIMITS["lock"], what="lock file")
    lock = load_lock(path)
    platform = current_platform()
    matches = None
    if verify:
        try:
            matches = verify_environment(path, prefix, platform=platform).matches
        except ReprotrainError:
            matches = None  # not a conda prefix, or this platform is not locked: not determinable
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(),
            "content_hash": lock.metadata.content_hash.get(platform), "platform": platform, "matches": matches}


def check_fingerprint_against_lock(fingerprint: dict, lockfile: str | os.PathLike) -> list[dict]:
    """Compare the fingerprint's Python, torch, CUDA and cuDNN with what LOCKFILE pins for its platform.

    Returns one row per field: {"field", "recorded", "locked", "ok"}. A field the lock does not pin
    (no CUDA in a CPU lock) is ok only when the fingerprint records none either.
    """
    from reprotrain.envlock.lockfile import load_lock, platform_pins

    platform = (fingerprint.get("platform") or {}).get("conda_subdir")
    if not platform:
        raise ReprotrainError("the fingerprint records no platform.conda_subdir to look up in the lock",
                              path=lockfile, exit_code=2)
    lock = load_lock(lockfile)
    if platform not in lock.metadata.platforms:
        raise ReprotrainError(f"the lock has no platform {platform} (it has "
                              f"{', '.join(lock.metadata.platforms) or 'none'})", path=lockfile, exit_code=1)
    pins = platform_pins(lock, platform)
    torch = fingerprint.get("torch") or {}
    python = fingerprint.get("python") or {}
    rows = [
        _row("python.version", python.get("version"), pins.get("python"), _same_version),
        _row("torch.version", torch.get("version"), pins.get("torch"), _same_torch_version),
        _row("torch.cuda", torch.get("cuda"), pins.get("cuda"), _same_prefix_version),
        _row("torch.cudnn", _cudnn_text(torch.get("cudnn")), pins.get("cudnn"), _same_prefix_version),
    ]
    return rows


def _row(field: str, recorded, locked, same) -> dict:
    recorded = None if recorded in (None, "") else str(recorded)
    locked = None if locked in (None, "") else str(locked)
    ok = recorded is None and locked is None or (recorded is not None and locked is not None
                                                  and same(recorded, locked))
    return {"field": field, "recorded": recorded, "locked": locked, "ok": bool(ok)}


def _parts(version: str) -> list[str]:
    return version.strip().split(".")


def _same_version(recorded: str, locked: str) -> bool:
    return _parts(recorded) == _parts(locked)


def _same_torch_version(recorded: str, locked: str) -> bool:
    # torch reports "2.14.1+cu130"; conda pins "2.14.1"; a pip lock may pin "2.14.1+cu130" too.
    if "+" in recorded and "+" in locked:
        return recorded == locked
    return _same_version(recorded.split("+", 1)[0], locked.split("+", 1)[0])


def _same_prefix_version(recorded: str, locked: str) -> bool:
    # torch reports CUDA "12.4" and cuDNN "9.1.0"; a lock pins "12.4" or cudnn "9.1.0.70": compare what both name.
    a, b = _parts(recorded), _parts(locked)
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def _cudnn_text(value) -> str | None:
    """cuDNN as dotted text: torch.backends.cudnn.version() gives 90100 (9.1.0) or 8902 (8.9.2)."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if not text.isdigit():
        return text
    number = int(text)
    if number >= 10000:  # cuDNN 9+: major*10000 + minor*100 + patch
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"  # cuDNN <= 8: major*1000 + minor*100 + patch
