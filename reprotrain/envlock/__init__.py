"""Environment locking and verification: conda-lock.yml files written, checked, read and verified.

Import-light on purpose (no torch, and conda-lock/rattler only inside the functions that need them):
`reprotrain lock --help` must stay instant. The public entry points are loaded on first use.

    lock()                 solve ENVFILEs for each platform and write conda-lock.yml (solve.py)
    check()                is a lock stale against its inputs? offline, no solve (staleness.py)
    read_lockfile()        any conda-lock.yml into conda-lock's models, or a one-line error (lockfile.py)
    summarize()            what `reprotrain lock show` prints (lockfile.py)
    platform_pins()        Python / torch / CUDA / cuDNN a lock pins for one platform (lockfile.py)
    verify_environment()   a live prefix against the lock (verify.py)
    create_environment()   install the locked environment (create.py)
    export_environment()   a live prefix as an environment file, explicit lock or conda-lock.yml (export.py)
"""

from __future__ import annotations

import importlib

# conda-lock's own default set (conda_lock.src_parser.DEFAULT_PLATFORMS), not imported: it costs half a second.
DEFAULT_PLATFORMS: tuple[str, ...] = ("linux-64", "osx-arm64", "osx-64", "win-64")
DEFAULT_LOCKFILE = "conda-lock.yml"

_EXPORTS = {
    "lock": "reprotrain.envlock.solve",
    "find_conda_executable": "reprotrain.envlock.solve",
    "check": "reprotrain.envlock.staleness",
    "read_lockfile": "reprotrain.envlock.lockfile",
    "summarize": "reprotrain.envlock.lockfile",
    "platform_pins": "reprotrain.envlock.lockfile",
    "verify_environment": "reprotrain.envlock.verify",
    "create_environment": "reprotrain.envlock.create",
    "export_environment": "reprotrain.envlock.export",
}

__all__ = ["DEFAULT_LOCKFILE", "DEFAULT_PLATFORMS", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
