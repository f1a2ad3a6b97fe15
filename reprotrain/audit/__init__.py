"""Auditing files: verify, inspect, ls, diff, the foreign-file classifier and the static pickle scanner.

This layer sits above checkpoint, fingerprint and envlock (verify compares recorded fingerprints with
a fingerprint, a policy and a lock). Public names load lazily so that `reprotrain verify --no-digest` and
`ls` import neither torch nor more than they use.

* ``classify``: what a file that is not a reprotrain checkpoint is (``classify``, ``classify_bytes``), with the
  static pickle scanner of the checkpoint layer (``reprotrain.checkpoint.pickle_scan``, which the checkpoint
  readers also run on every checkpoint's own pickle);
* ``verify``, ``inspection``, ``diff``, ``listing``: the commands' library; ``digest``: state digests.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VerifyResult": "reprotrain.audit.verify",
    "verify_paths": "reprotrain.audit.verify",
    "worst_exit_code": "reprotrain.audit.verify",
    "inspect_path": "reprotrain.audit.inspection",
    "diff_paths": "reprotrain.audit.diff",
    "list_run": "reprotrain.audit.listing",
    "state_digest": "reprotrain.audit.digest",
    "training_state_digest": "reprotrain.audit.digest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reprotrain.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
