"""Signed checkpoints: an Ed25519 signature in the zip comment (docs/checkpoint-format.md, "Signature").

The signed message holds the integrity digest (every metadata byte by SHA-256) and a SHA-256 over every tensor
body: the integrity digest binds tensors only through CRC-32s, which a forger can keep while changing the data.
A save hashes the tensors on its CRC-32 thread while writing; a check hashes them in the pass that checks the
CRC-32s (verify, resume). Signature format 1 signed the integrity digest alone: it is reported `weak`.

Keys are ordinary PEM / OpenSSH files; private keys whose permissions give the group or others any access are
refused. Key material and key paths never leave this module: checkpoints record only the key id and signing time.

The cryptography comes from `cryptography` (pyca), imported only when a key is loaded or a signature checked.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from reprotrain.checkpoint import container
from reprotrain.checkpoint.container import SignatureLine
from reprotrain.errors import ReprotrainError

# Verdicts (docs/checkpoint-format.md, "Signature"). `weak`: a valid format-1 signature by a trusted key, which
# does not bind the tensor bytes cryptographically: treated like `unsigned` (refused when a signature is required).
TRUSTED, UNSIGNED, WEAK, UNTRUSTED, BAD = "trusted", "unsigned", "weak", "untrusted", "bad"


class SignatureRefused(ReprotrainError):
    """The signature verdict fails the caller's requirement: unsigned when required, untrusted signer, bad signature."""

    exit_code = 5


class KeyFileError(ReprotrainError):
    """A key file is unreadable, not an Ed25519 key, or too open (exit code 2)."""

    exit_code = 2


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography is in the [sign] and [test] extras
        raise ReprotrainError("signing needs the 'cryptography' package: pip install 'reprotrain[sign]'") from None
    return serialization, ed25519


def key_id(public_raw: bytes) -> str:
    """The key id: the first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def message(digest: str, key: str, when: str, tensors: str | None) -> bytes:
    """The signed message for an integrity digest and the tensors' digest (both "sha256:<hex>"), a key id and a
    time. ``tensors`` None: the format-1 message (read only, to tell `weak` from `bad`)."""
    if tensors is None:
        return f"reprotrain-signature/1\n{digest}\nkey={key}\ntime={when}\n".encode("ascii")
    return f"reprotrain-signature/2\n{digest}\ntensors={tensors}\nkey={key}\ntime={when}\n".encode("ascii")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_key_file(path: str | os.PathLike, *, private: bool) -> bytes:
    from reprotrain import safeio

    what = "private key file" if private else "public key file"
    try:
        handle = safeio.open_regular(path, limit=safeio.limit_for("key"), what=what)
    except ReprotrainError as exc:
        raise KeyFileError(exc.message, path=path) from None
    with handle:
        mode = os.fstat(handle.fileno()).st_mode
        if private and sys.platform != "win32" and mode & 0o077:
            raise KeyFileError(f"private key file permissions {stat.S_IMODE(mode):04o} are too open "
                               f"(group or others have access); run: chmod 600 {path}", path=path)
        return handle.read()


class SigningKey:
    """An Ed25519 private key loaded from a file (never written anywhere, never printed)."""

    def __init__(self, private_key, *, source: str = "<memory>"):
        serialization, _ = _crypto()
        self._key = private_key
        self.public_raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(self.public_raw)
        self._source = source

    def __repr__(self) -> str:  # never the key material
        return f"SigningKey(key_id={self.key_id})"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SigningKey":
        serialization, ed25519 = _crypto()
        data = _read_key_file(path, private=True)
        key = None
        try:
            if b"OPENSSH PRIVATE KEY" in data:
                key = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyFileError("private key is encrypted; reprotrain reads unencrypted keys only "
                            "(protect the file with its permissions)", path=path) from None
        except Exception:
            raise KeyFileError("not a PEM or OpenSSH private key", path=path) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFileError(f"not an Ed25519 private key ({type(key).__name__.replace('_', '')})", path=path)
        return cls(key, source=os.fspath(path))

    @classmethod
    def generate(cls) -> "SigningKey":
        _, ed25519 = _crypto()
        return cls(ed25519.Ed25519PrivateKey.generate())

    def public_key(self) -> "TrustedKey":
        _, ed25519 = _crypto()
        return TrustedKey(ed25519.Ed25519PublicKey.from_public_bytes(self.public_raw), self.key_id, "<own key>")

    def sign_digest(self, digest: str, tensors: str, *, when: str | None = None) -> SignatureLine:
        """The signature line for an integrity digest and the tensors' SHA-256 (both "sha256:<hex>")."""
        when = when or _utc_now()
        return SignatureLine(self.key_id, when, self._key.sign(message(digest, self.key_id, when, tensors)))

    def private_pem(self) -> bytes:
        serialization, _ = _crypto()
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def public_pem(self) -> bytes:
        serialization, _ = _crypto()
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class TrustedKey:
    key: object  # Ed25519PublicKey
    key_id: str
    source: str


def load_public_key(path: str | os.PathLike) -> TrustedKey:
    serialization, ed25519 = _crypto()
    data = _read_key_file(path, private=False)
    if b"PRIVATE KEY" in data:
        raise KeyFileError("this is a private key; give the public key (.pub) as a trusted key", path=path)
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except Exception:
        raise KeyFileError("not a PEM or OpenSSH public key", path=path) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key", path=path)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return TrustedKey(key, key_id(raw), os.fspath(path))


@dataclass(frozen=True)
class Verdict:
    status: str  # trusted | unsigned | weak | untrusted | bad
    key_id: str | None
    time: str | None
    message: str

    @property
    def ok(self) -> bool:
        return self.status == TRUSTED

    @property
    def as_unsigned(self) -> bool:
        """No signature a reader could check: unsigned, or format 1 (which binds no tensor byte)."""
        return self.status in (UNSIGNED, WEAK)

    def refused(self, *, require_signature: bool) -> bool:
        """Whether a reader that trusts some keys refuses this file: any signature failure, and an unsigned (or
        weak) file only when a signature is required."""
        return not self.ok and (require_signature or not self.as_unsigned)

    def to_dict(self) -> dict:
        return {"status": self.status, "key_id": self.key_id, "time": self.time, "message": self.message}


class TrustedKeys:
    """The public keys a reader trusts, by key id. Revoking a key = no longer listing it."""

    def __init__(self, keys: Iterable[TrustedKey | SigningKey | str | os.PathLike] = ()):
        self._keys: dict[str, TrustedKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key) -> None:
        if isinstance(key, SigningKey):
            key = key.public_key()
        elif not isinstance(key, TrustedKey):
            key = load_public_key(key)
        self._keys[key.key_id] = key

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def screen(self, directory: container.Directory) -> Verdict | None:
        """What the signature line alone decides, without reading tensors: a failing verdict (unsigned, untrusted
        key, format 1 `weak` or `bad`), or None when a trusted key signed it in format 2 and `check` with the
        tensors' digest (container.check_integrity(..., hash_tensors=True)) must decide.

        ``directory`` None: a sealed framework directory, which has no signature (yet): unsigned."""
        line = directory.signature if directory is not None else None
        if line is None:
            return Verdict(UNSIGNED, None, None, "checkpoint is not signed")
        trusted = self._keys.get(line.key_id)
        if trusted is None:
            return Verdict(UNTRUSTED, line.key_id, line.time,
                           f"signed by key {line.key_id}, which is not a trusted key")
        if line.version == 1:
            if not _valid(trusted, line, message(directory.trailer_digest, line.key_id, line.time, None)):
                return _bad(line)
            return Verdict(WEAK, line.key_id, line.time,
                           f"signed by trusted key {line.key_id} in signature format 1, which does not bind the tensor "
                           "bytes cryptographically; re-sign it (reprotrain sign) to have it trusted")
        return None

    def check(self, directory: container.Directory, tensors_digest: str | None) -> Verdict:
        """The verdict on a container's signature, given the tensors' digest computed from the bytes. The caller
        has checked the integrity digest against the bytes in the same pass."""
        screened = self.screen(directory)
        if screened is not None:
            return screened
        line = directory.signature
        if tensors_digest is None:
            raise ValueError("a format-2 signature is checked with the tensors' digest (hash_tensors=True)")
        if not _valid(self._keys[line.key_id], line,
                      message(directory.trailer_digest, line.key_id, line.time, tensors_digest)):
            return _bad(line)
        return Verdict(TRUSTED, line.key_id, line.time, f"signed by trusted key {line.key_id} at {line.time}")


def _valid(trusted: TrustedKey, line: SignatureLine, signed: bytes) -> bool:
    try:
        trusted.key.verify(line.signature, signed)
    except Exception:  # cryptography.exceptions.InvalidSignature
        return False
    return True


def _bad(line: SignatureLine) -> Verdict:
    return Verdict(BAD, line.key_id, line.time,
                   f"signature by key {line.key_id} does not match the checkpoint (changed after signing, or forged)")


def require(verdict: Verdict, *, path, require_signature: bool = True) -> None:
    """Raise SignatureRefused (exit 5) when the verdict is refused (`weak` counts as unsigned)."""
    if verdict.refused(require_signature=require_signature):
        raise SignatureRefused(verdict.message, path=path)


def sign_file(path: str | os.PathLike, key: SigningKey, *, log=None) -> Verdict:
    """Sign an existing local checkpoint in place, atomically, without re-serialising it (docs/checkpoint-format.md).

    Every byte up to the end record is copied unchanged (by the kernel where it can) into a temporary file in the
    same directory; the copy is re-checked (CRC-32 of every tensor record, SHA-256 of the metadata against the
    original trailer) while the digest with the signed comment length is computed; then the signature is
    appended, the copy made durable and renamed over the original, and the directory made durable. In a run
    directory the run's writer lock is held throughout (RunDirectoryBusy while a writer owns it).
    A file already signed by ``key`` is left as it is (a format-1 signature is replaced by a format-2 one); one
    whose signature by ``key`` does not match is refused (re-signing it would vouch for a change made after signing).
    """
    from reprotrain.checkpoint import reader, store
    from reprotrain.checkpoint.location import Location

    log = log or (lambda msg: None)
    location = Location.of(path)
    if not location.is_local:
        raise ReprotrainError("sign checkpoints in object stores at save time (--sign-key); "
                              "reprotrain sign works on local files", path=location)
    path = location.path
    run = None
    if (path.parent / store.LOCK_NAME).exists():
        run = store.RunDirectory(path.parent, log=log)
        run.acquire()
    try:
        return _sign_locked(path, key, reader, store)
    finally:
        if run is not None:
            run.release()


def _sign_locked(path: Path, key: SigningKey, reader, store) -> Verdict:
    from reprotrain.checkpoint.manifest import CorruptCheckpoint

    with reader.open_checkpoint(path) as opened:
        directory = opened.info.directory
        previous = directory.signature
        if previous is not None and previous.key_id == key.key_id:
            own = TrustedKeys([key])
            verdict = own.screen(directory)  # format 1 by this key: `weak` (re-signed below) or `bad`
            if verdict is None:
                report = container.check_integrity(opened.file, directory, hash_tensors=True)
                if not report.ok:
                    raise CorruptCheckpoint("; ".join(report.problems), path=path)
                verdict = own.check(directory, report.tensors_digest)
            if verdict.status == BAD:
                raise SignatureRefused(f"{verdict.message}; refusing to re-sign it", path=path)
            if verdict.ok:
                return verdict
        src = opened.file.fileno()
        mode = stat.S_IMODE(os.fstat(src).st_mode)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}{store.PARTIAL_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:
            raise ReprotrainError(f"cannot create {tmp.name}: {exc.strerror or exc}", path=path.parent) from None
        try:
            _copy_range(src, fd, directory.comment_start)  # everything up to the comment, end record included
            with open(fd, "rb", buffering=0, closefd=False) as copy:
                report, digest = container.check_and_redigest(copy, directory, container.SIGNED_COMMENT_LEN,
                                                              hash_tensors=True)
            if not report.ok:
                raise CorruptCheckpoint("; ".join(report.problems), path=path)
            line = key.sign_digest(digest, report.tensors_digest)
            os.pwrite(fd, container.SIGNED_COMMENT_LEN.to_bytes(2, "little"), directory.comment_start - 2)
            comment = container.TRAILER_PREFIX + digest.split(":", 1)[1].encode("ascii") + b"\n" + line.encode()
            _write_all(fd, comment, directory.comment_start)
            os.ftruncate(fd, directory.comment_start + len(comment))
            store.durable_sync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
            store.fsync_directory(path.parent)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
    return Verdict(TRUSTED, line.key_id, line.time, f"signed by key {line.key_id} at {line.time}"
                   + (f" (replacing the signature by key {previous.key_id})" if previous is not None else ""))


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _copy_range(src: int, dst: int, length: int) -> None:
    """Copy bytes [0, length) of src to dst at the same offsets, in the kernel where possible."""
    offset = 0
    copy = getattr(os, "copy_file_range", None)
    while offset < length and copy is not None:
        try:
            n = copy(src, dst, length - offset, offset, offset)
        except OSError:
            break  # cross-device or unsupported: fall back to read/write below
        if n == 0:
            break
        offset += n
    while offset < length:
        chunk = os.pread(src, min(container.CHUNK, length - offset), offset)
        if not chunk:
            raise ReprotrainError("file shrank while it was being signed")
        _write_all(dst, chunk, offset)
        offset += len(chunk)


def as_signing_key(key) -> SigningKey | None:
    if key is None or isinstance(key, SigningKey):
        return key
    return SigningKey.load(key)


def as_trusted_keys(keys) -> TrustedKeys | None:
    if keys is None:
        return None
    if isinstance(keys, TrustedKeys):
        return keys
    if isinstance(keys, (str, os.PathLike, TrustedKey, SigningKey)):
        keys = [keys]
    return TrustedKeys(keys)


def write_key_pair(path: str | os.PathLike, key: SigningKey | None = None) -> SigningKey:
    """Write a new private key to ``path`` (mode 0600, never over an existing file) and its public key to ``path.pub``."""
    key = key or SigningKey.generate()
    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    for target in (path, pub):
        if target.exists():
            raise ReprotrainError("refusing to overwrite an existing key file", path=target)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.private_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(pub, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, key.public_pem())
        finally:
            os.close(fd)
    except OSError as exc:
        raise ReprotrainError(f"cannot write key file: {exc.strerror or exc}", path=path) from None
    return key
