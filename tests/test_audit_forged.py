"""Forged reprotrain checkpoints, built from docs/checkpoint-format.md alone (tests/hostile/forge.py: records
rewritten with zipfile, CRC-32s and the integrity trailer recomputed): verify never says OK, ls never marks
them resumable, resume never picks them, and no payload ever runs (canaries)."""

from __future__ import annotations

import json
import zipfile

import pytest
from click.testing import CliRunner

from reprotrain import fingerprint as fp
from reprotrain.audit import list_run, verify_paths
from reprotrain.checkpoint import container, reader, store
from reprotrain.checkpoint.manifest import UnsafeCheckpoint
from reprotrain.cli import main
from tests.audit_checkpoints import write_checkpoint, write_fingerprint
from tests.hostile import forge


@pytest.fixture(scope="module")
def recorded() -> dict:
    return fp.collect()


@pytest.fixture
def genuine(tmp_path, recorded) -> bytes:
    return write_checkpoint(tmp_path / "genuine.pth", fingerprint=recorded).read_bytes()


def test_the_forger_reproduces_a_valid_trailer(genuine, tmp_path, recorded):
    # The forger is faithful to the format doc: re-sealing an unchanged checkpoint verifies OK. So the refusals
    # below come from the content, not from a trailer the forger got wrong.
    resealed = tmp_path / "resealed.pth"
    resealed.write_bytes(forge.replace_records(genuine, {}))
    [result] = verify_paths([resealed], against=write_fingerprint(tmp_path / "fp.json", recorded))
    assert (result.exit_code, result.category) == (0, "checkpoint"), result.reason


@pytest.mark.parametrize("via, imported", [("system", "posix.system"), ("eval", "builtins.eval"),
                                           ("exec", "builtins.exec")])
@pytest.mark.parametrize("no_digest", [False, True])
def test_payload_in_data_pkl_is_unsafe_with_and_without_digest(genuine, tmp_path, via, imported, no_digest):
    canary = tmp_path / "CANARY"
    path = tmp_path / "step0000000010-latest.pth"
    path.write_bytes(forge.forged_payload_checkpoint(genuine, str(canary), via=via))
    with zipfile.ZipFile(path) as archive:  # a valid zip: every CRC-32 matches
        assert archive.testzip() is None
    [result] = verify_paths([path], digest=not no_digest)
    assert (result.exit_code, result.category) == (2, "unsafe-pickle")
    assert imported in result.reason and "archive/data.pkl" in result.reason
    cli = CliRunner().invoke(main, ["verify", str(path)] + (["--no-digest"] if no_digest else []))
    assert cli.exit_code == 2 and cli.output.startswith("UNSAFE"), cli.output
    assert not canary.exists()


@pytest.mark.parametrize("member", ["archive/extra.pkl", "archive/notes.txt", "archive/reprotrain/x"])
@pytest.mark.parametrize("protocol", [0, 2])
def test_payload_in_any_other_member_is_unsafe(genuine, tmp_path, member, protocol):
    canary = tmp_path / "CANARY"
    path = tmp_path / "x.pth"
    payload = forge.payload_pickle(str(canary), protocol=protocol)
    path.write_bytes(forge.replace_records(genuine, {}, extra=[(member, payload)]))
    for digest in (True, False):
        [result] = verify_paths([path], digest=digest)
        assert (result.exit_code, result.category) == (2, "unsafe-pickle"), result.reason
        assert member in result.reason
    assert not canary.exists()


def test_unsafe_checkpoint_is_never_resumable_nor_picked(genuine, tmp_path, recorded):
    run = tmp_path / "run"
    run.mkdir()
    older = write_checkpoint(run / "step0000000005-latest.pth", fingerprint=recorded, step=5)
    canary = tmp_path / "CANARY"
    newest = run / "step0000000010-latest.pth"
    newest.write_bytes(forge.forged_payload_checkpoint(genuine, str(canary)))
    for deep in (True, False):
        listing = list_run(run, deep=deep)
        rows = {row["name"]: row for row in listing["checkpoints"]}
        assert not rows[newest.name]["valid"] and "unsafe" in rows[newest.name]["problem"]
        assert listing["resume"] == str(older)
        entries = store.list_checkpoints(run, deep=deep)
        assert store.select_for_resume(entries).path == older
    with pytest.raises(UnsafeCheckpoint):
        reader.read_info(newest)
    assert not canary.exists()


def _set_digest(manifest):
    manifest["fingerprint_digest"] = "sha256:" + "0" * 64


def _environment_key(manifest):
    key = manifest["fingerprint_digest"]
    manifest["environments"] = {"sha256:" + "1" * 64: manifest["environments"][key]}


def _environment_content(manifest):
    key = manifest["fingerprint_digest"]
    forged = json.loads(json.dumps(manifest["environments"][key]))
    forged["torch"]["version"] = "0.0.1"
    manifest["environments"][key] = forged


def _lineage(manifest):
    manifest["lineage"][0]["fingerprint_digest"] = "sha256:" + "2" * 64


def _recorded_fingerprint(manifest):
    manifest["fingerprint"]["torch"]["version"] = "0.0.1"  # the digest no longer matches the fingerprint


@pytest.mark.parametrize("edit", [_set_digest, _environment_key, _environment_content, _lineage,
                                  _recorded_fingerprint])
def test_digests_that_do_not_match_their_fingerprints_are_invalid(genuine, tmp_path, recorded, edit):
    path = tmp_path / "forged.pth"
    path.write_bytes(forge.forged_manifest(genuine, edit))
    against = write_fingerprint(tmp_path / "fp.json", recorded)
    for digest in (True, False):
        [result] = verify_paths([path], against=against, digest=digest)
        assert (result.exit_code, result.category) == (2, "invalid-manifest"), result.reason
        assert "digest" in result.reason or "environments" in result.reason


def test_protocol_4_payload_with_memo_is_unsafe(genuine, tmp_path):
    # STACK_GLOBAL with its operands fetched from the memo (protocol 4 MEMOIZE): resolved, still refused.
    canary = tmp_path / "CANARY"
    payload = forge.payload_pickle(str(canary), protocol=4)
    assert b"\x93" in payload  # STACK_GLOBAL
    path = tmp_path / "p4.pth"
    path.write_bytes(forge.replace_records(genuine, {"archive/data.pkl": payload}))
    [result] = verify_paths([path], digest=False)
    assert result.category == "unsafe-pickle" and "posix.system" in result.reason
    assert not canary.exists()


def test_diff_on_a_file_that_fails_integrity_is_exit_2(tmp_path, recorded):
    a = write_checkpoint(tmp_path / "a.pth", fingerprint=recorded)
    b = write_checkpoint(tmp_path / "b.pth", fingerprint=recorded, step=12)
    with open(b, "rb") as handle:
        record = container.read_directory(handle).records["archive/data/0"]
    data = bytearray(b.read_bytes())
    data[record.data_offset + 1] ^= 0x01  # inside the first tensor record's body: only its CRC-32 notices
    b.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert result.exit_code == 2, result.output
    assert "CRC-32" in result.output or "damaged" in result.output


@pytest.mark.parametrize("field", ["step", "epoch", "samples_seen"])
def test_counters_beyond_int64_are_invalid(genuine, tmp_path, recorded, field):
    path = tmp_path / "huge.pth"
    path.write_bytes(forge.forged_manifest(genuine, lambda manifest: manifest.__setitem__(field, 10 ** 30)))
    [result] = verify_paths([path], against=write_fingerprint(tmp_path / "fp.json", recorded), digest=False)
    assert (result.exit_code, result.category) == (2, "invalid-manifest"), result.reason
