"""verify / inspect / ls / diff on real reprotrain checkpoints: damage, the fingerprint gate, digests, no torch."""

from __future__ import annotations

import copy
import json
import struct
import sys
import subprocess

import pytest
import torch
from click.testing import CliRunner

from reprotrain import fingerprint as fp
from reprotrain.checkpoint import container
from reprotrain.audit import diff_paths, inspect_path, state_digest, verify_paths
from reprotrain.cli import main
from tests.audit_checkpoints import small_state, write_checkpoint, write_fingerprint


@pytest.fixture(scope="module")
def recorded() -> dict:
    return fp.collect()


@pytest.fixture
def checkpoint(tmp_path, recorded):
    return write_checkpoint(tmp_path / "latest.pth", fingerprint=recorded)


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _records(path):
    with open(path, "rb") as handle:
        return container.read_directory(handle).records


def test_valid_checkpoint_verifies(checkpoint, recorded, tmp_path):
    against = write_fingerprint(tmp_path / "fp.json", recorded)
    [result] = verify_paths([checkpoint], against=against)
    assert (result.exit_code, result.category) == (0, "checkpoint")
    assert result.integrity["ok"] and result.schema_ok
    assert result.fingerprint["differences"] == []


def test_flipped_tensor_byte_is_corrupt_and_no_digest_does_not_read_tensors(checkpoint, recorded, tmp_path):
    record = next(container.iter_data_records(container.read_directory(open(checkpoint, "rb"))))
    _flip(checkpoint, record.data_offset + 1)
    against = write_fingerprint(tmp_path / "fp.json", recorded)
    [result] = verify_paths([checkpoint], against=against)
    assert result.exit_code == 2 and "tensor record" in result.reason and "damaged" in result.reason
    # Manifest-only verification reads no tensor data, so it cannot see that damage.
    [fast] = verify_paths([checkpoint], against=against, digest=False)
    assert fast.exit_code == 0 and fast.integrity is None


def test_flipped_metadata_byte_is_corrupt(checkpoint, recorded, tmp_path):
    pkl = _records(checkpoint)["archive/data.pkl"]
    _flip(checkpoint, pkl.data_offset + 10)
    [result] = verify_paths([checkpoint], against=write_fingerprint(tmp_path / "fp.json", recorded))
    assert result.exit_code == 2
    assert "does not match the integrity digest" in result.reason or "CRC-32" in result.reason


def test_truncated_and_trailerless_checkpoints_are_corrupt(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    no_trailer = tmp_path / "no-trailer.pth"
    comment = len(container.TRAILER_PREFIX) + 64
    body = data[:-comment]
    no_trailer.write_bytes(body[:-2] + struct.pack("<H", 0))
    results = verify_paths([truncated, no_trailer], on_mismatch="ignore")
    assert [r.exit_code for r in results] == [2, 2]
    assert "trailer is missing" in results[1].reason
    assert all("\n" not in r.reason for r in results)


def test_missing_file_and_directory_exit_2(tmp_path):
    results = verify_paths([tmp_path / "nope.pth", tmp_path], on_mismatch="ignore")
    assert [(r.exit_code, r.category) for r in results] == [(2, "corrupt"), (2, "corrupt")]


def test_fingerprint_gate_refuse_warn_ignore_and_policy(checkpoint, recorded, tmp_path):
    other = copy.deepcopy(recorded)
    other["torch"]["version"] = "1.13.1"
    other["libraries"]["numpy"] = "0.0.1"
    against = write_fingerprint(tmp_path / "other.json", other)
    [refused] = verify_paths([checkpoint], against=against)
    assert (refused.exit_code, refused.category) == (1, "environment-refused")
    assert "torch.version" in refused.reason and "--on-mismatch warn" in refused.reason
    [warned] = verify_paths([checkpoint], against=against, on_mismatch="warn")
    assert warned.exit_code == 0 and any("torch.version" in w for w in warned.warnings)
    [ignored] = verify_paths([checkpoint], against=against, on_mismatch="ignore")
    assert ignored.exit_code == 0 and ignored.warnings == []
    policy = tmp_path / "policy.yml"
    policy.write_text("torch.version: warn\n")
    [allowed] = verify_paths([checkpoint], against=against, policy=policy)
    assert allowed.exit_code == 0


def test_lock_gate(checkpoint, recorded, realworld):
    lock = realworld / "conda-lock" / "01-ai__Yi__conda-lock.yml"  # linux-64, torch 2.0.1, CUDA 11.8
    if recorded["platform"]["conda_subdir"] != "linux-64":
        pytest.skip("the real-world lock pins linux-64 only; this machine records another platform")
    [refused] = verify_paths([checkpoint], lock=lock, on_mismatch=None)
    assert refused.exit_code == 1 and "lock: torch.version" in refused.reason
    assert {row["field"] for row in refused.lock} == {"python.version", "torch.version", "torch.cuda", "torch.cudnn"}
    [warned] = verify_paths([checkpoint], lock=lock, on_mismatch="warn")
    assert warned.exit_code == 0 and any("torch.version" in w for w in warned.warnings)


def _trained_where_the_lock_pins(recorded: dict, **torch_changes) -> dict:
    """A fingerprint of a linux-64 machine with exactly what the real-world lock pins (Python 3.10.13, torch 2.0.1,
    CUDA 11.8, cuDNN 8.7.0): another machine than this one, whatever this one is."""
    doc = copy.deepcopy(recorded)
    doc["platform"]["conda_subdir"] = "linux-64"
    doc["python"]["version"] = "3.10.13"
    doc["torch"].update({"version": "2.0.1+cu118", "cuda": "11.8", "cudnn": "8.7.0", **torch_changes})
    return doc


def test_verify_compares_with_the_named_reference_only(recorded, tmp_path, realworld):
    """--lock compares with the lock's pins, --against with that fingerprint, both with both; the live environment
    only when nothing is named; the result says which."""
    lock = realworld / "conda-lock" / "01-ai__Yi__conda-lock.yml"  # linux-64, Python 3.10.13, torch 2.0.1, CUDA 11.8
    trained = _trained_where_the_lock_pins(recorded)
    assert fp.compare(trained, recorded).refused  # this machine is not the training machine
    checkpoint = write_checkpoint(tmp_path / "ck.pth", fingerprint=trained)
    training_fp = write_fingerprint(tmp_path / "training.json", trained)
    live_fp = write_fingerprint(tmp_path / "live.json", recorded)

    [by_lock] = verify_paths([checkpoint], lock=lock)
    assert (by_lock.exit_code, by_lock.category) == (0, "checkpoint"), by_lock.reason
    assert by_lock.reason.endswith(f"environment matches the lock {lock}") and by_lock.fingerprint is None
    assert by_lock.reference["kind"] == "lock" and all(row["ok"] for row in by_lock.lock)

    [by_file] = verify_paths([checkpoint], against=training_fp)
    assert by_file.exit_code == 0 and by_file.reason.endswith(f"environment matches {training_fp}")
    assert by_file.lock is None and by_file.reference["kind"] == "fingerprint"

    [live] = verify_paths([checkpoint])
    assert live.exit_code == 1 and "against the live environment: " in live.reason and "torch.version" in live.reason
    assert live.reference["kind"] == "live"

    [both] = verify_paths([checkpoint], against=live_fp, lock=lock)
    assert both.exit_code == 1 and f"against {live_fp} and the lock {lock}: " in both.reason
    assert both.reference["kind"] == "fingerprint+lock" and "lock:" not in both.reason  # the lock itself agrees

    other_build = write_checkpoint(tmp_path / "other.pth", fingerprint=_trained_where_the_lock_pins(
        recorded, version="2.0.0+cu118"))
    [refused] = verify_paths([other_build], lock=lock)
    assert refused.exit_code == 1 and refused.category == "environment-refused"
    assert f"against the lock {lock}: lock: torch.version 2.0.0+cu118 is not the locked 2.0.1" in refused.reason


def test_cli_verify_with_the_lock_passes_on_a_runner_unlike_the_training_machine(recorded, tmp_path, realworld):
    """docs/ci.md's gate as a real process: the checkpoint matches the lock, this machine does not."""
    lock = realworld / "conda-lock" / "01-ai__Yi__conda-lock.yml"
    checkpoint = write_checkpoint(tmp_path / "ck.pth", fingerprint=_trained_where_the_lock_pins(recorded))
    result = subprocess.run([sys.executable, "-m", "reprotrain", "verify", str(checkpoint), "--lock", str(lock)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK       {checkpoint}: ok: integrity verified, manifest valid, "
                                    f"environment matches the lock {lock}"), result.stdout
    as_json = subprocess.run([sys.executable, "-m", "reprotrain", "verify", str(checkpoint), "--json"],
                             capture_output=True, text=True, timeout=300)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["results"][0]["reference"]["kind"] == "live"


def test_cli_verify_json_and_exit_codes(checkpoint, recorded, tmp_path, realworld):
    runner = CliRunner()
    against = write_fingerprint(tmp_path / "fp.json", recorded)
    foreign_file = realworld / "checkpoints" / "burn__burn-store_reader_test_data__checkpoint.pt"
    ok = runner.invoke(main, ["verify", "--json", "--against", str(against), str(checkpoint)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["results"][0]["category"] == "checkpoint"
    mixed = runner.invoke(main, ["verify", "--against", str(against), str(checkpoint), str(foreign_file)])
    assert mixed.exit_code == 3 and mixed.output.splitlines()[1].startswith("FOREIGN")
    bad = runner.invoke(main, ["verify", "--against", str(tmp_path / "missing.json"), str(checkpoint)])
    assert bad.exit_code == 2 and "reprotrain: error:" in bad.output and "missing.json" in bad.output


def test_no_digest_verify_imports_no_torch_and_no_foreign_file_classifier(checkpoint, recorded, tmp_path):
    against = write_fingerprint(tmp_path / "fp.json", recorded)
    code = ("import sys\nfrom reprotrain.cli import main\n"
            f"sys.argv = ['reprotrain', 'verify', '--no-digest', '--against', {str(against)!r}, {str(checkpoint)!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules,\n"
            "          'reprotrain.audit.classify' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # The classifier of foreign files (tarfile, tempfile: ~50 ms of a CLI start) is imported only for one.
    assert done.stdout.strip().splitlines()[-1] == "exit 0 False False", done.stdout + done.stderr


def test_inspect_digest_equal_exactly_for_bit_identical_weights(tmp_path, recorded):
    state = small_state(seed=3)
    a = write_checkpoint(tmp_path / "a.pth", state=state, fingerprint=recorded)
    b = write_checkpoint(tmp_path / "b.pth", state=copy.deepcopy(state), fingerprint=recorded, step=99)
    changed = copy.deepcopy(state)
    weight = changed["model"]["weight"]
    weight.view(torch.int32)[0, 0] ^= 1  # one bit of one weight
    c = write_checkpoint(tmp_path / "c.pth", state=changed, fingerprint=recorded)
    report_a, report_b, report_c = inspect_path(a), inspect_path(b), inspect_path(c)
    assert report_a["state_digest"] == report_b["state_digest"] == state_digest(state["model"])
    assert report_a["state_digest"] != report_c["state_digest"]
    assert report_a["training_state_digest"] == report_b["training_state_digest"]
    assert report_a["tensors"]["count"] == 4 and report_a["tensors"]["dtypes"] == {"float32": 4}
    assert report_a["lineage"][0]["segment"] == 0
    shown = CliRunner().invoke(main, ["inspect", str(a)])
    assert shown.exit_code == 0 and report_a["state_digest"] in shown.output


def test_inspect_of_foreign_and_unsafe_files_is_one_line(realworld):
    runner = CliRunner()
    legacy = runner.invoke(main, ["inspect", str(realworld / "checkpoints" /
                                                 "burn__burn-store_reader_test_data__simple_legacy.pt")])
    assert legacy.exit_code == 3 and "legacy format" in legacy.output and len(legacy.output.splitlines()) == 1
    unsafe = runner.invoke(main, ["inspect", str(realworld / "malicious-pickles" /
                                                 "picklescan__tests_data_malicious1.zip")])
    assert unsafe.exit_code == 2 and "builtins.eval" in unsafe.output


def test_diff_reports_fingerprint_and_lineage(tmp_path, recorded):
    other = copy.deepcopy(recorded)
    other["torch"]["version"] = "1.13.1"
    a = write_checkpoint(tmp_path / "a.pth", fingerprint=recorded, segments=1)
    b = write_checkpoint(tmp_path / "b.pth", fingerprint=other, segments=2, step=30)
    result = diff_paths(a, b)
    fields = {d["field"]: d for d in result["fingerprint"]["differences"]}
    assert fields["torch.version"]["severity"] == "refuse"
    assert result["lineage"]["same_run"] and result["lineage"]["common_segments"] == 0  # digests differ
    assert len(result["lineage"]["only_b"]) == 2
    assert {"field": "step", "a": 10, "b": 30} in result["manifest"]
    cli = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert cli.exit_code == 1 and "torch.version" in cli.output
    same = CliRunner().invoke(main, ["diff", "--json", str(a), str(a)])
    assert same.exit_code == 0 and json.loads(same.output)["identical_environment_and_lineage"]


def test_ls_marks_validity_and_resume_pick(tmp_path, recorded):
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "periodic-10.pth", fingerprint=recorded, step=10, kind="periodic")
    newest = write_checkpoint(run / "latest.pth", fingerprint=recorded, step=20)
    record = next(container.iter_data_records(container.read_directory(open(newest, "rb"))))
    _flip(newest, record.data_offset)  # the newest is damaged: resume must fall back
    (run / "notes.pth").write_bytes(b"junk")
    done = CliRunner().invoke(main, ["ls", "--json", str(run)])
    assert done.exit_code == 0, done.output
    rows = {row["name"]: row for row in json.loads(done.output)["checkpoints"]}
    assert rows["latest.pth"]["valid"] is False and "damaged" in rows["latest.pth"]["problem"]
    assert rows["notes.pth"]["valid"] is False
    assert rows["periodic-10.pth"]["resume"] and rows["periodic-10.pth"]["monitor"]["name"] == "val_loss"
    table = CliRunner().invoke(main, ["ls", str(run)])
    assert "resume would pick:" in table.output and "periodic-10.pth" in table.output.splitlines()[-1]
    missing = CliRunner().invoke(main, ["ls", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and len(missing.output.splitlines()) == 1
