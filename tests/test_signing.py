"""Signed checkpoints (issue 12): Ed25519 over the integrity digest, in the zip comment (docs/checkpoint-format.md).

Real keys (cryptography), real checkpoints written by CheckpointManager, real forgeries: an attacker who knows the
format rewrites the file with a recomputed integrity trailer and keeps (or strips) the signature line.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, container, reader, signing, store
from reprotrain.checkpoint.manifest import CorruptCheckpoint
from reprotrain.checkpoint import format as ckformat
from reprotrain.errors import ReprotrainError


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {name: (signing.write_key_pair(d / name), d / name, d / f"{name}.pub") for name in ("alice", "bob")}


def _manager(run_dir, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("retention", RetentionPolicy(keep_last=10))
    return CheckpointManager(run_dir, torch.nn.Linear(8, 4), save_policy="never", log=lambda m: None, **kwargs)


@pytest.fixture()
def signed(tmp_path, keys):
    mgr = _manager(tmp_path / "run", signing_key=keys["alice"][1])
    path = mgr.save(epoch=0, step=3, samples_seen=12)
    mgr.close()
    return path


class _Replay:
    """A 'signer' that writes a signature line it did not make: what a forger without the private key can do."""

    def __init__(self, line):
        self.line = line

    def sign_digest(self, digest, tensors):
        return self.line


def _rewrite(path: Path, out: Path, *, change, line):
    obj = torch.load(path, weights_only=True)
    change(obj)
    with open(out, "wb") as f:
        ckformat.write(f, obj["reprotrain"], obj["state"], signer=_Replay(line) if line is not None else None)
    return out


def _verdict(path, *trusted):
    with reader.open_checkpoint(path) as opened:
        report = reader.check_integrity(opened.info, opened.file, hash_tensors=True)
        assert report.ok, report.problems  # the digest matches the bytes
        return signing.TrustedKeys(trusted).check(opened.info.directory, report.tensors_digest)


def test_round_trip_signed_at_save_loads_with_plain_torch_and_holds_no_key(signed, keys):
    key, key_path, pub = keys["alice"]
    verdict = _verdict(signed, pub)
    assert verdict.status == "trusted" and verdict.key_id == key.key_id
    info = reader.read_info(signed, check_integrity=True)
    assert info.signature["key_id"] == key.key_id and info.signature["time"].endswith("Z")
    obj = torch.load(signed, weights_only=True)
    assert obj["reprotrain"]["step"] == 3
    assert torch.load(signed, weights_only=True, mmap=True)["state"]["model"]["weight"].shape == (4, 8)
    data = signed.read_bytes()
    assert len(data) - info.directory.comment_start == container.SIGNED_COMMENT_LEN
    for secret in (key.private_pem(), key._key.private_bytes_raw(), os.fsencode(key_path)):
        assert secret not in data
    assert str(key_path) not in repr(obj["reprotrain"])


def test_forged_manifest_with_recomputed_trailer_is_rejected(signed, keys, tmp_path):
    line = reader.read_info(signed).directory.signature

    def bump(obj):
        obj["reprotrain"]["step"] = 999

    forged = _rewrite(signed, tmp_path / "forged.pth", change=bump, line=line)
    assert reader.read_info(forged, check_integrity=True).manifest["step"] == 999  # integrity alone is fooled
    verdict = _verdict(forged, keys["alice"][2])
    assert verdict.status == "bad" and verdict.key_id == keys["alice"][0].key_id


def test_forged_payload_with_recomputed_trailer_is_rejected(signed, keys, tmp_path):
    line = reader.read_info(signed).directory.signature

    def poison(obj):
        obj["state"]["model"]["weight"][0, 0] += 1.0

    forged = _rewrite(signed, tmp_path / "forged.pth", change=poison, line=line)
    assert reader.read_info(forged, check_integrity=True).manifest["step"] == 3
    assert _verdict(forged, keys["alice"][2]).status == "bad"
    # Re-signed by the forger's own key: a valid signature, by a key nobody trusts.
    resigned = tmp_path / "resigned.pth"
    obj = torch.load(forged, weights_only=True)
    with open(resigned, "wb") as f:
        ckformat.write(f, obj["reprotrain"], obj["state"], signer=keys["bob"][0])
    verdict = _verdict(resigned, keys["alice"][2])
    assert verdict.status == "untrusted" and keys["bob"][0].key_id in verdict.message


def test_wrong_key_and_revoked_key_are_untrusted(signed, keys):
    bob_pub = keys["bob"][2]
    verdict = _verdict(signed, bob_pub)  # rotated: alice's key removed from the trusted set (= revoked)
    assert verdict.status == "untrusted" and keys["alice"][0].key_id in verdict.message
    with pytest.raises(signing.SignatureRefused) as exc:
        signing.require(verdict, path=signed)
    assert exc.value.exit_code == 5
    assert _verdict(signed, bob_pub, keys["alice"][2]).ok  # both listed during a rotation: accepted


def test_stripped_signature(signed, keys, tmp_path):
    directory = reader.read_info(signed).directory
    data = signed.read_bytes()
    # Only the line removed: the end record's comment length no longer reaches the end of the file.
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:directory.comment_start + container.UNSIGNED_COMMENT_LEN])
    with pytest.raises(CorruptCheckpoint):
        reader.read_info(cut)
    # Length fixed and digest recomputed (anyone can): a valid unsigned file, which a signature requirement refuses.
    with open(signed, "rb") as f:
        report, digest = container.check_and_redigest(f, directory, container.UNSIGNED_COMMENT_LEN)
    assert report.ok
    head = bytearray(data[:directory.comment_start])
    head[-2:] = struct.pack("<H", container.UNSIGNED_COMMENT_LEN)
    stripped = tmp_path / "stripped.pth"
    stripped.write_bytes(bytes(head) + container.TRAILER_PREFIX + digest.split(":")[1].encode())
    verdict = _verdict(stripped, keys["alice"][2])
    assert verdict.status == "unsigned"
    with pytest.raises(signing.SignatureRefused):
        signing.require(verdict, path=stripped)
    signing.require(verdict, path=stripped, require_signature=False)  # only trusted keys were asked for


def test_resume_with_trusted_keys_skips_a_newer_unsigned_checkpoint(tmp_path, keys):
    run = tmp_path / "run"
    mgr = _manager(run, signing_key=keys["alice"][1])
    signed_path = mgr.save(epoch=0, step=5, samples_seen=20)
    mgr.close()
    mgr = _manager(run)  # someone without the key writes a newer one
    mgr.resume()
    unsigned_path = mgr.save(epoch=0, step=9, samples_seen=36)
    mgr.close()
    logged = []
    mgr = CheckpointManager(run, torch.nn.Linear(8, 4), save_policy="never", log=logged.append,
                            trusted_keys=[keys["alice"][2]])
    info = mgr.resume()
    assert info.step == 5 and info.path.name == signed_path.name
    assert any(unsigned_path.name in m and "not signed" in m for m in logged), logged
    with pytest.raises(signing.SignatureRefused) as exc:
        mgr.resume(unsigned_path)  # an explicit path is refused, not skipped
    assert exc.value.exit_code == 5
    mgr.close()
    # Bob's key signs, Alice's is the only trusted one: Bob's newer checkpoint is foreign, not picked.
    mgr = _manager(run, signing_key=keys["bob"][1], trusted_keys=[keys["alice"][2]])
    assert mgr.resume().step == 5
    mgr.save(epoch=0, step=11, samples_seen=44)
    mgr.close()
    mgr = _manager(run, trusted_keys=[keys["alice"][2]])
    assert mgr.resume().step == 5
    mgr.close()
    mgr = _manager(run, trusted_keys=[keys["alice"][2], keys["bob"][2]])
    assert mgr.resume().step == 11
    mgr.close()


def test_retention_keeps_the_checkpoint_a_trusted_resume_would_pick(tmp_path, keys):
    run = tmp_path / "run"
    mgr = _manager(run, signing_key=keys["alice"][1])
    mgr.save(epoch=0, step=1, samples_seen=1)
    mgr.close()
    mgr = _manager(run, trusted_keys=[keys["alice"][2]], retention=RetentionPolicy(keep_last=1))
    mgr.resume()
    mgr.save(epoch=0, step=2, samples_seen=2)  # unsigned: retention must not delete the only trusted one
    mgr.save(epoch=0, step=3, samples_seen=3)
    mgr.close()
    names = sorted(p.name for p in run.glob("*.pth"))
    assert "step0000000001-latest.pth" in names, names


def test_sign_after_the_fact_keeps_every_byte_and_is_atomic(tmp_path, keys):
    mgr = _manager(tmp_path / "run")
    path = mgr.save(epoch=0, step=2, samples_seen=8)
    before = path.read_bytes()
    directory = reader.read_info(path).directory
    with pytest.raises(store.RunDirectoryBusy):  # the training process still owns the run directory
        signing.sign_file(path, keys["alice"][0])
    mgr.close()
    inode = path.stat().st_ino
    verdict = signing.sign_file(path, keys["alice"][0])
    assert verdict.ok
    after = path.read_bytes()
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    cut = directory.comment_start - 2
    assert after[:cut] == before[:cut]  # every byte up to the comment length, tensors included
    assert _verdict(path, keys["alice"][2]).ok
    assert not list(path.parent.glob(".*.partial"))
    assert torch.equal(torch.load(path, weights_only=True)["state"]["model"]["weight"],
                       torch.load(tmp_path / "run" / path.name, weights_only=True)["state"]["model"]["weight"])
    # Replacing the signature with another key; signing again with the same key changes nothing.
    assert signing.sign_file(path, keys["bob"][0]).key_id == keys["bob"][0].key_id
    same = path.read_bytes()
    signing.sign_file(path, keys["bob"][0])
    assert path.read_bytes() == same


def test_sign_refuses_to_launder_a_changed_file(signed, keys, tmp_path):
    line = reader.read_info(signed).directory.signature
    forged = _rewrite(signed, tmp_path / "forged.pth", change=lambda o: o["reprotrain"].update(step=7), line=line)
    with pytest.raises(signing.SignatureRefused):
        signing.sign_file(forged, keys["alice"][0])


def test_sign_refuses_a_damaged_file(tmp_path, keys):
    mgr = _manager(tmp_path / "run")
    path = mgr.save(epoch=0, step=2, samples_seen=8)
    mgr.close()
    data = bytearray(path.read_bytes())
    rec = next(container.iter_data_records(reader.read_info(path).directory))
    data[rec.data_offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        signing.sign_file(path, keys["alice"][0])
    assert path.read_bytes() == bytes(data) and not list(path.parent.glob(".*.partial"))


def test_key_files(tmp_path, keys):
    key_path = tmp_path / "k"
    key = signing.write_key_pair(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    with pytest.raises(ReprotrainError):
        signing.write_key_pair(key_path)  # never over an existing key
    os.chmod(key_path, 0o640)
    with pytest.raises(signing.KeyFileError) as exc:
        signing.SigningKey.load(key_path)
    assert "too open" in exc.value.message and exc.value.exit_code == 2
    os.chmod(key_path, 0o600)
    assert signing.SigningKey.load(key_path).key_id == key.key_id
    with pytest.raises(signing.KeyFileError):
        signing.load_public_key(key_path)  # a private key given as a trusted key
    with pytest.raises(signing.KeyFileError):
        signing.SigningKey.load(tmp_path / "k.pub")
    assert signing.load_public_key(tmp_path / "k.pub").key_id == key.key_id
    assert key.key_id not in repr(key.private_pem()) and "PRIVATE" not in repr(key)
    # OpenSSH keys work too (ssh-keygen -t ed25519 writes this format).
    from cryptography.hazmat.primitives import serialization
    ssh_pub = tmp_path / "id.pub"
    ssh_pub.write_bytes(key._key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                           serialization.PublicFormat.OpenSSH))
    assert signing.load_public_key(ssh_pub).key_id == key.key_id


# --------------------------------------------------------------------------- command line


def _cli(*args, cwd=None):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "reprotrain", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def _error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    return lines[0]


def test_cli_keygen_sign_verify_inspect(tmp_path, keys):
    out = _cli("keygen", tmp_path / "ci")
    assert out.returncode == 0, out.stderr
    key_id = signing.SigningKey.load(tmp_path / "ci").key_id
    assert key_id in out.stdout
    assert _cli("keygen", tmp_path / "ci").returncode == 2  # never over an existing key
    mgr = _manager(tmp_path / "run")
    path = mgr.save(epoch=0, step=2, samples_seen=8)
    mgr.close()
    # Unsigned: passes with only trusted keys (a warning), fails when a signature is required.
    out = _cli("verify", path, "--trusted-key", tmp_path / "ci.pub")
    assert out.returncode == 0 and "not signed" in out.stdout, out.stdout + out.stderr
    out = _cli("verify", path, "--trusted-key", tmp_path / "ci.pub", "--require-signature")
    assert out.returncode == 5 and "not signed" in out.stdout, out.stdout + out.stderr
    assert _cli("verify", path, "--require-signature").returncode == 2  # no key to check against: bad input
    out = _cli("sign", path, "--key", tmp_path / "ci")
    assert out.returncode == 0 and key_id in out.stdout, out.stderr
    out = _cli("verify", path, "--trusted-key", tmp_path / "ci.pub", "--require-signature", "--json")
    assert out.returncode == 0, out.stdout
    import json
    assert json.loads(out.stdout)["results"][0]["signature"]["status"] == "trusted"
    # Key rotation: the new key and the old one both trusted, then the old one removed (revoked).
    out = _cli("verify", path, "--trusted-key", keys["bob"][2], "--trusted-key", tmp_path / "ci.pub")
    assert out.returncode == 0
    out = _cli("verify", path, "--trusted-key", keys["bob"][2])
    assert out.returncode == 5 and key_id in out.stdout and "not a trusted key" in out.stdout
    out = _cli("inspect", path)
    assert out.returncode == 0 and f"signed by key {key_id}" in out.stdout and "signature format 2" in out.stdout
    out = _cli("ls", tmp_path / "run", "--json")
    assert json.loads(out.stdout)["checkpoints"][0]["signer"] == key_id


def test_cli_rejects_forgeries_with_one_line_naming_the_key(signed, keys, tmp_path):
    alice = keys["alice"][0].key_id
    line = reader.read_info(signed).directory.signature

    def poison(obj):
        obj["state"]["model"]["bias"].zero_()

    forged = _rewrite(signed, tmp_path / "forged.pth", change=poison, line=line)
    assert _cli("verify", forged).returncode == 0  # without trusted keys a recomputed trailer passes: why signatures
    for args in (("--trusted-key", keys["alice"][2]), ("--trusted-key", keys["bob"][2])):
        out = _cli("verify", forged, *args)
        assert out.returncode == 5, out.stdout + out.stderr
        assert alice in out.stdout and len(out.stdout.strip().splitlines()) == 1
    out = _cli("verify", signed, forged, "--trusted-key", keys["alice"][2])
    assert out.returncode == 5 and "does not match" in out.stdout
    # sign refuses to launder it with the key whose signature it carries
    out = _cli("sign", forged, "--key", keys["alice"][1])
    assert out.returncode == 5 and alice in _error_line(out)


def test_cli_refuses_a_key_file_others_can_read(tmp_path, keys, signed):
    loose = tmp_path / "loose"
    loose.write_bytes(keys["alice"][0].private_pem())
    os.chmod(loose, 0o644)
    out = _cli("sign", signed, "--key", loose)
    assert out.returncode == 2 and "too open" in _error_line(out)


def test_cli_train_signs_and_resume_trusts(tmp_path, keys):
    run = tmp_path / "run"
    common = ("--run-dir", run, "--epochs", "1", "--save", "steps:30", "-q")
    out = _cli("train", *common, "--sign-key", keys["alice"][1])
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in run.glob("*.pth"))
    out = _cli("verify", *(run / n for n in names), "--trusted-key", keys["alice"][2], "--require-signature")
    assert out.returncode == 0, out.stdout
    secrets = [keys["alice"][0].private_pem(), keys["alice"][0]._key.private_bytes_raw(),
               os.fsencode(keys["alice"][1])]
    for f in run.iterdir():
        data = f.read_bytes()
        assert not any(s in data for s in secrets), f.name
    # Resume with a trusted key that did not sign them: nothing trusted to resume, an explicit path refused (5).
    out = _cli("train", *common, "--epochs", "2", "--trusted-key", keys["bob"][2], "--resume", run / names[-1])
    errors = [line for line in out.stderr.splitlines() if line.startswith("reprotrain: error:")]
    assert out.returncode == 5 and "Traceback" not in out.stderr and len(errors) == 1, out.stderr
    assert keys["alice"][0].key_id in errors[0] and "not a trusted key" in errors[0]


def test_object_store_checkpoints_carry_their_signature_and_resume_checks_it(keys):
    """The signature is in the checkpoint object itself (fsspec memory://, the object-store commit protocol)."""
    import uuid

    url = f"memory://signing-{uuid.uuid4().hex[:8]}/run"
    mgr = _manager(url, signing_key=keys["alice"][1])
    signed_url = mgr.save(epoch=0, step=1, samples_seen=4)
    mgr.close()
    mgr = _manager(url)
    mgr.resume()
    mgr.save(epoch=0, step=2, samples_seen=8)  # newer, unsigned
    mgr.close()
    assert _verdict(signed_url, keys["alice"][2]).ok
    logged = []
    mgr = CheckpointManager(url, torch.nn.Linear(8, 4), save_policy="never", log=logged.append,
                            trusted_keys=[keys["alice"][2]], retention=RetentionPolicy(keep_last=10))
    assert mgr.resume().step == 1
    assert any("step0000000002-latest.pth" in m and "not signed" in m for m in logged), logged
    mgr.close()


# ------------------------------------------------------------------ tensors bound by SHA-256 (signature format 2)

def _same_crc_edit(body: bytes) -> bytes:
    """BODY with its first byte changed and its last four adjusted so that its CRC-32 is unchanged: what a forger
    who keeps the CRC-32s (hence the integrity digest) does. CRC-32 is affine over GF(2): with
    L(x) = crc(x) ^ crc(0...0), crc(body ^ d) == crc(body) exactly when L(d) == 0; d = e ^ x with e the wanted
    change and x in the last 32 bits, solved from the 32 columns L(unit bit)."""
    n = len(body)
    zero = zlib.crc32(bytes(n))

    def lin(delta: bytes) -> int:
        return zlib.crc32(delta) ^ zero

    wanted = bytearray(n)
    wanted[0] = 0x5A
    target = lin(bytes(wanted))
    columns = []
    for bit in range(32):
        unit = bytearray(n)
        unit[n - 4 + bit // 8] = 1 << (bit % 8)
        columns.append(lin(bytes(unit)))
    # Gaussian elimination: find bits whose columns XOR to target.
    rows = [(columns[i], 1 << i) for i in range(32)]
    basis: dict[int, tuple[int, int]] = {}
    for value, combo in rows:
        for pivot in sorted(basis, reverse=True):
            if value >> pivot & 1:
                value, combo = value ^ basis[pivot][0], combo ^ basis[pivot][1]
        if value:
            basis[value.bit_length() - 1] = (value, combo)
    value, combo = target, 0
    for pivot in sorted(basis, reverse=True):
        if value >> pivot & 1:
            value, combo = value ^ basis[pivot][0], combo ^ basis[pivot][1]
    assert value == 0, "no solution"
    delta = bytearray(wanted)
    for bit in range(32):
        if combo >> bit & 1:
            delta[n - 4 + bit // 8] ^= 1 << (bit % 8)
    forged = bytes(a ^ b for a, b in zip(body, delta))
    assert forged != body and zlib.crc32(forged) == zlib.crc32(body)
    return forged


def _forge_tensor(path: Path, out: Path) -> Path:
    """A copy of PATH whose largest tensor record differs while every CRC-32 and the integrity trailer stay valid."""
    directory = reader.read_info(path).directory
    record = max(container.iter_data_records(directory), key=lambda r: r.size)
    data = bytearray(path.read_bytes())
    body = bytes(data[record.data_offset:record.data_offset + record.size])
    data[record.data_offset:record.data_offset + record.size] = _same_crc_edit(body)
    out.write_bytes(bytes(data))
    assert reader.read_info(out, check_integrity=True).step == reader.read_info(path).step  # integrity is fooled
    assert any(not torch.equal(a, b) for a, b in zip(_tensors(torch.load(out, weights_only=True)),
                                                      _tensors(torch.load(path, weights_only=True))))
    return out


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _with_line(path: Path, out: Path, line: container.SignatureLine) -> Path:
    directory = reader.read_info(path).directory
    data = path.read_bytes()
    start = directory.comment_start + container.UNSIGNED_COMMENT_LEN + 1
    out.write_bytes(data[:start] + line.encode())
    return out


def _format1(path: Path, out: Path, key: signing.SigningKey) -> Path:
    """PATH re-signed in signature format 1 (the integrity digest alone), validly, by KEY."""
    directory = reader.read_info(path).directory
    line = directory.signature
    old = signing.message(directory.trailer_digest, key.key_id, line.time, None)
    return _with_line(path, out, container.SignatureLine(key.key_id, line.time, key._key.sign(old), version=1))


def test_same_crc_tensor_substitution_breaks_the_signature_everywhere(tmp_path, keys):
    """The forgery the integrity digest cannot see (CRC-32 kept) fails verify, explicit resume and run resume."""
    alice_key, alice_private, alice_pub = keys["alice"]
    run = tmp_path / "run"
    mgr = _manager(run, signing_key=alice_private)
    older = mgr.save(epoch=0, step=1, samples_seen=4)
    newest = mgr.save(epoch=0, step=2, samples_seen=8)
    mgr.close()
    _forge_tensor(newest, tmp_path / "forged.pth")
    os.replace(tmp_path / "forged.pth", newest)
    assert _verdict(newest, alice_pub).status == "bad"
    out = _cli("verify", newest, "--trusted-key", alice_pub)
    assert out.returncode == 5 and alice_key.key_id in out.stdout and "does not match" in out.stdout, out.stdout
    out = _cli("verify", newest, "--trusted-key", alice_pub, "--no-digest")  # the signature still reads the tensors
    assert out.returncode == 5, out.stdout
    assert _cli("verify", older, "--trusted-key", alice_pub, "--require-signature").returncode == 0
    with pytest.raises(signing.SignatureRefused) as exc:
        _manager(run, trusted_keys=[alice_pub]).resume(newest)
    assert exc.value.exit_code == 5
    logged = []
    mgr = CheckpointManager(run, torch.nn.Linear(8, 4), save_policy="never", log=logged.append,
                            trusted_keys=[alice_pub], retention=RetentionPolicy(keep_last=10))
    assert mgr.resume().step == 1
    mgr.close()
    assert any(newest.name in m and "does not match" in m for m in logged), logged


def test_format1_signature_is_weak_and_a_downgrade_is_bad(signed, keys, tmp_path):
    alice_key, alice_private, alice_pub = keys["alice"]
    weak = _format1(signed, tmp_path / "weak.pth", alice_key)
    assert reader.read_info(weak, check_integrity=True).signature["format"] == 1
    verdict = _verdict(weak, alice_pub)
    assert verdict.status == "weak" and "format 1" in verdict.message
    out = _cli("verify", weak, "--trusted-key", alice_pub)
    assert out.returncode == 0 and "format 1" in out.stdout, out.stdout  # no worse than unsigned: a warning
    assert _cli("verify", weak, "--trusted-key", alice_pub, "--require-signature").returncode == 5
    # A format-2 line relabelled "/1" (a downgrade to escape the tensor hash) is not a valid format-1 signature.
    line = reader.read_info(signed).directory.signature
    downgraded = _with_line(signed, tmp_path / "down.pth",
                            container.SignatureLine(line.key_id, line.time, line.signature, version=1))
    assert _verdict(downgraded, alice_pub).status == "bad"
    # reprotrain sign upgrades a weak signature by its own key to format 2.
    assert signing.sign_file(weak, alice_key).ok
    assert reader.read_info(weak).signature["format"] == 2 and _verdict(weak, alice_pub).ok


def test_sharded_managers_refuse_keys_instead_of_resuming_unsigned_directories(tmp_path, keys):
    for option in ({"trusted_keys": [keys["alice"][2]]}, {"signing_key": keys["alice"][1]}):
        with pytest.raises(ReprotrainError, match="not available with sharded=True"):
            CheckpointManager(tmp_path / "run", torch.nn.Linear(8, 4), sharded=True, **option)
        assert not (tmp_path / "run").exists()  # refused before anything was created
