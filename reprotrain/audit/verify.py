"""`reprotrain verify`: integrity, schema and environment verdict on each file, classification of the others.

``verify_paths(..., digest=False)`` reads only zip directories and manifests and never imports torch.

Exit codes of a verification (docs/checkpoints.md): 0 ok (warnings allowed), 1 environment refused by
policy, 2 corrupt, unreadable or invalid (unsafe pickles included), 3 a readable PyTorch file that is not
a reprotrain checkpoint, 5 the signature verdict failed (with trusted keys: signed by no trusted key or a
signature that does not match; with ``require_signature``: unsigned). Several files: the worst one, ranked
2 > 5 > 3 > 1 > 0, because a damaged file is the most urgent finding, a signature failure may be tampering,
and a foreign file means the gate checked nothing.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Iterable

from reprotrain.checkpoint import reader
from reprotrain.checkpoint.manifest import CorruptCheckpoint, NotACheckpoint, UnsafeCheckpoint
from reprotrain.checkpoint.location import Location
from reprotrain.errors import ReprotrainError

_SEVERITY_RANK = {2: 4, 5: 3, 3: 2, 1: 1, 0: 0}


def worst_exit_code(codes: Iterable[int]) -> int:
    """The overall exit code of several results: 2 > 5 > 3 > 1 > 0."""
    return max(codes, key=lambda code: _SEVERITY_RANK.get(code, 5), default=0)


@dataclass
class VerifyResult:
    """The verdict on one file."""

    path: str
    exit_code: int
    category: str  # checkpoint | environment-refused | corrupt | invalid-manifest | a foreign.Classification category
    reason: str  # one line
    integrity: dict | None = None  # {"ok", "problems", "bytes_checked"}; None when not checked
    schema_ok: bool | None = None  # manifest validated against the schema; None when no manifest was found
    fingerprint: dict | None = None  # Comparison.to_json() against --against or the live environment
    lock: list[dict] | None = None  # check_fingerprint_against_lock rows, with --lock
    warnings: list[str] = field(default_factory=list)
    manifest: dict | None = None  # run_id, kind, epoch, step, created of a reprotrain checkpoint
    signature: dict | None = None  # {"status", "key_id", "time", "message"}; status "not-checked" without trusted keys
    reference: dict | None = None  # what the environment was compared with: {"kind", "against", "lock", "label"}

    def to_dict(self) -> dict:
        return asdict(self)


class _Reference:
    """What recorded fingerprints are compared with, loaded once for all files: exactly what the user named
    (``against``: a fingerprint file; ``lock``: a lock's pins; both: both), the live environment only when
    nothing is named. A CI runner verifying against a lock is not the training machine: its own Python, torch
    and CUDA must not count."""

    def __init__(self, against, lock, policy, on_mismatch):
        from reprotrain import fingerprint as fp

        self.policy = fp.Policy.load(policy, on_mismatch=on_mismatch)
        self.on_mismatch = on_mismatch
        self.against = os.fspath(against) if against is not None else None
        self.fingerprint = fp.load(against) if against is not None else None
        self.lock = os.fspath(lock) if lock is not None else None
        if self.lock is not None:
            from reprotrain.envlock.lockfile import read_lockfile

            read_lockfile(self.lock)  # a bad lock file is bad input for every file: fail once, up front
        # The fingerprint comparison runs against --against, or against the live environment when nothing is named.
        self.compares_fingerprint = self.against is not None or self.lock is None

    def environment(self) -> dict:
        """The fingerprint to compare with: --against's, or the live one (collected once, on first use)."""
        if self.fingerprint is None:
            from reprotrain import fingerprint as fp

            self.fingerprint = fp.collect()
        return self.fingerprint

    @property
    def label(self) -> str:
        """What the recorded environment was compared with, as the output names it."""
        named = [self.against] if self.against is not None else []
        named += [f"the lock {self.lock}"] if self.lock is not None else []
        return " and ".join(named) or "the live environment"

    @property
    def kind(self) -> str:
        """``fingerprint``, ``lock``, ``fingerprint+lock`` or ``live``."""
        named = (["fingerprint"] if self.against is not None else []) + (["lock"] if self.lock is not None else [])
        return "+".join(named) or "live"


def verify_paths(paths: Iterable[str | os.PathLike], *, against=None, lock=None, policy=None,
                 on_mismatch: str | None = None, digest: bool = True, trusted_keys=None,
                 require_signature: bool = False) -> list[VerifyResult]:
    """Verify every path: integrity (unless ``digest`` is false), schema, and the recorded environment against
    the reference the caller names: ``against`` (a fingerprint JSON), ``lock`` (the Python, torch, CUDA and cuDNN
    a conda-lock.yml pins for the recorded platform), both, or, when neither is named, the live environment.

    ``trusted_keys`` (public key files or a `signing.TrustedKeys`): a signed file must be signed by one of them
    and its signature must match (exit 5 otherwise); ``require_signature``: an unsigned file fails too (exit 5).

    Errors in the shared inputs (fingerprint, policy, lock, key files) raise ReprotrainError; problems with a
    checkpoint become that file's result.
    """
    trusted = None
    if trusted_keys:
        from reprotrain.checkpoint import signing  # only with keys: the key loaders are not needed otherwise

        trusted = signing.as_trusted_keys(trusted_keys)
    if require_signature and not trusted:
        raise ReprotrainError("--require-signature needs at least one --trusted-key (the public keys to accept)")
    reference = _Reference(against, lock, policy, on_mismatch)
    return [_verify_one(Location.of(p), reference, digest, trusted, require_signature) for p in paths]


def _manifest_summary(manifest: dict) -> dict:
    return {key: manifest.get(key) for key in ("run_id", "kind", "epoch", "step", "created")}


def _verify_one(path: Location, reference: _Reference, digest: bool, trusted=None,
                require_signature: bool = False) -> VerifyResult:
    from reprotrain import fingerprint as fp

    shown = str(path)
    try:
        with reader.open_checkpoint(path) as opened:  # manifest and integrity from one open file
            info = opened.info
            # A signature by a trusted key binds the tensors' SHA-256: hashed in the integrity pass, which then
            # runs even with --no-digest (the signature cannot be checked without reading the tensors).
            screened = trusted.screen(info.directory) if trusted is not None else None
            hash_tensors = trusted is not None and screened is None
            integrity = (reader.check_integrity(info, opened.file, hash_tensors=hash_tensors)
                         if digest or hash_tensors else None)
    except NotACheckpoint as exc:
        if path.is_dir():  # a framework checkpoint directory that was never sealed (or whose writer died first)
            return VerifyResult(shown, 3, "unsealed-directory", exc.message)
        from reprotrain.audit import classify as foreign  # only for what is not a checkpoint: ~50 ms of imports

        verdict = foreign.classify(path)
        return VerifyResult(shown, verdict.exit_code, verdict.category, verdict.reason)
    except UnsafeCheckpoint as exc:
        return VerifyResult(shown, 2, "unsafe-pickle", exc.message)
    except CorruptCheckpoint as exc:
        invalid = exc.message.startswith("manifest is invalid")
        return VerifyResult(shown, 2, "invalid-manifest" if invalid else "corrupt", exc.message,
                            schema_ok=False if invalid else None)
    result = VerifyResult(shown, 0, "checkpoint", "", schema_ok=True, manifest=_manifest_summary(info.manifest))
    if integrity is not None:
        result.integrity = {"ok": integrity.ok, "problems": integrity.problems,
                            "bytes_checked": integrity.bytes_checked}
        if not integrity.ok:
            result.exit_code, result.category = 2, "corrupt"
            result.reason = "; ".join(integrity.problems)
            return result
    if trusted is not None:
        from reprotrain.checkpoint import signing

        verdict = screened or trusted.check(info.directory, integrity.tensors_digest)
        result.signature = verdict.to_dict()
        if verdict.refused(require_signature=require_signature):
            result.exit_code, result.category = 5, f"signature-{verdict.status}"
            result.reason = verdict.message + ("; a signature is required" if verdict.as_unsigned else "")
            return result
        if verdict.as_unsigned:
            result.warnings.append("not signed" if verdict.status == signing.UNSIGNED else verdict.message)
    elif info.signature is not None:
        result.signature = {"status": "not-checked", **info.signature,
                            "message": "signed; give --trusted-key to check the signature"}
    result.reference = {"kind": reference.kind, "against": reference.against, "lock": reference.lock,
                        "label": reference.label}
    comparison = None
    try:
        if reference.compares_fingerprint:
            comparison = fp.compare(info.manifest["fingerprint"], reference.environment(), reference.policy)
        else:
            fp.validate(info.manifest["fingerprint"], source="<recorded fingerprint>")
    except ReprotrainError as exc:
        result.exit_code, result.category, result.schema_ok = 2, "invalid-manifest", False
        result.reason = f"recorded fingerprint is invalid: {exc.message}"
        return result
    refused: list[str] = []
    if comparison is not None:
        result.fingerprint = comparison.to_json()
        refused = [d.field for d in comparison.differences if d.severity == "refuse"]
        warned = [d.field for d in comparison.differences if d.severity == "warn"]
        shown = reference.against or reference.label
        result.warnings += [f"{name} differs from {shown}" for name in warned]
    if reference.lock is not None:
        from reprotrain.envlock.fingerprint_section import check_fingerprint_against_lock

        try:
            result.lock = check_fingerprint_against_lock(info.manifest["fingerprint"], reference.lock)
        except ReprotrainError as exc:
            result.lock = []
            refused.append(f"lock ({exc.message})")
        for row in result.lock:
            if row["ok"]:
                continue
            text = f"{row['field']} {row['recorded']} is not the locked {row['locked']}"
            if reference.on_mismatch == "ignore":
                continue
            if reference.on_mismatch == "warn":
                result.warnings.append(text)
            else:
                refused.append(f"lock: {text}")
    checked = "integrity verified" if digest else "integrity not checked (--no-digest)"
    if info.directory is None:  # a sealed framework directory: the seal is checked, not the framework's formats
        checked = (f"sealed directory, {len(info.manifest['state']['components'])} files "
                   f"{'re-hashed' if digest else 'not re-hashed (--no-digest)'} (their own formats are not scanned)")
    if result.signature is not None and result.signature["status"] == "trusted":
        checked += f", {result.signature['message']}"
    if refused:
        result.exit_code, result.category = 1, "environment-refused"
        hint = comparison.allow_hint() if comparison is not None else ""
        result.reason = (f"environment refused by policy against {reference.label}: {', '.join(refused)}; "
                         f"to allow: {hint or '--on-mismatch warn'}")
    else:
        state = f"{len(result.warnings)} warnings against" if result.warnings else "environment matches"
        result.reason = f"ok: {checked}, manifest valid, {state} {reference.label}"
    return result
