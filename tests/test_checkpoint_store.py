"""The run directory: one writer, atomic commits, I/O failures, resume selection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, list_checkpoints, select_for_resume
from reprotrain.checkpoint.store import RunDirectoryBusy
from reprotrain.errors import EnvironmentRefused, ReprotrainError
from reprotrain import fingerprint as fp


def save_steps(run_dir, steps, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16)
    mgr = CheckpointManager(run_dir, model, save_policy="never", retention=RetentionPolicy(keep_last=10), **kwargs)
    paths = [mgr.save("latest", epoch=0, step=s, samples_seen=s) for s in steps]
    mgr.close()
    return paths


def test_second_writer_in_another_process_gets_a_clear_error(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, torch
        from reprotrain.checkpoint import CheckpointManager
        mgr = CheckpointManager({str(tmp_path)!r}, torch.nn.Linear(2, 2))
        print("locked", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match=rf"in use by another writer \(pid {holder.pid} on "):
            CheckpointManager(tmp_path, torch.nn.Linear(2, 2))
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the lock with the process: a new writer gets in.
    CheckpointManager(tmp_path, torch.nn.Linear(2, 2)).close()


def test_leftover_partial_files_are_removed_with_a_message(tmp_path):
    (tmp_path / ".step0000000003-latest.pth.123.abcd.partial").write_bytes(b"half a checkpoint")
    messages = []
    CheckpointManager(tmp_path, torch.nn.Linear(2, 2), log=messages.append).close()
    assert not list(tmp_path.glob("*.partial"))
    assert any("removed 1 unfinished checkpoint file(s)" in m for m in messages)


def test_newest_corrupt_and_truncated_checkpoints_are_skipped_on_resume(tmp_path):
    paths = save_steps(tmp_path, [1, 2, 3, 4])
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])  # truncated newest
    damaged = bytearray(paths[2].read_bytes())
    damaged[len(damaged) // 3] ^= 0x40  # one flipped bit in the next one
    paths[2].write_bytes(bytes(damaged))
    reports = []
    pick = select_for_resume(list_checkpoints(tmp_path), report=reports.append)
    assert pick.path == paths[1]
    assert any(paths[2].name in r and "damaged" in r for r in reports)
    assert any(paths[3].name in r for r in reports)

    model = torch.nn.Linear(16, 16)
    messages = []
    mgr = CheckpointManager(tmp_path, model, log=messages.append)
    info = mgr.resume()
    assert info.step == 2
    assert any("skipping damaged checkpoint" in m for m in messages)
    mgr.close()


def test_non_resumable_emergency_is_never_picked_automatically(tmp_path):
    save_steps(tmp_path, [1, 2])
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(16, 16), save_policy="never")
    mgr.save("latest", epoch=0, step=5, samples_seen=5)
    mgr._position["step"] = 6
    emergency = mgr.emergency("non-finite loss (nan) at step 6", resumable=False)
    mgr.close()
    assert emergency.exists()
    pick = select_for_resume(list_checkpoints(tmp_path))
    assert pick.info.manifest["kind"] == "latest" and pick.info.manifest["step"] == 5
    # Explicitly named, it can still be inspected and resumed by a person who decides to.
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(16, 16))
    assert mgr.resume(emergency).kind == "emergency"
    mgr.close()


def test_resume_required_with_nothing_to_resume_is_an_error(tmp_path):
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(2, 2))
    assert mgr.resume() is None
    with pytest.raises(ReprotrainError, match="nothing to resume"):
        mgr.resume(required=True)
    mgr.close()


def test_retention_runs_after_commit_and_keeps_best(tmp_path):
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(2, 2), save_policy="epochs:1", monitor="acc", mode="max",
                            retention=RetentionPolicy(keep_last=2, keep_best=1))
    for epoch, acc in enumerate([0.5, 0.9, 0.6, 0.7, 0.65], start=1):
        mgr.step_done(epoch=epoch, step=epoch * 10, samples_seen=epoch * 100, metrics={"acc": acc}, epoch_end=True)
    mgr.close()
    kept = {(e.info.manifest["step"], e.info.manifest["kind"]) for e in list_checkpoints(tmp_path)}
    assert kept == {(20, "best"), (40, "latest"), (50, "latest")}


def _mount_tmpfs(path: Path, size: str, *, readonly=False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    if readonly:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "fs"
    _mount_tmpfs(mount, "2m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_a_clear_error_and_keeps_previous_checkpoints(small_fs):
    model = torch.nn.Linear(64, 64)  # ~17 KB of tensors: a few fit, then the disk fills
    mgr = CheckpointManager(small_fs, model, save_policy="never", retention=RetentionPolicy(keep_last=1000))
    good = mgr.save("latest", epoch=0, step=1, samples_seen=1)
    big = torch.nn.Linear(1024, 1024)  # 4 MiB: does not fit
    mgr.model = big
    with pytest.raises(ReprotrainError, match="disk full while writing step0000000002-latest.pth; previous "
                                              "checkpoints are intact"):
        mgr.save("latest", epoch=0, step=2, samples_seen=2)
    mgr.close()
    assert not list(small_fs.glob(".*.partial"))
    assert [e.path for e in list_checkpoints(small_fs, deep=True) if e.valid] == [good]


def test_read_only_directory_is_a_clear_error(small_fs):
    save_steps(small_fs, [1])
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(ReprotrainError, match="read-only file system"):
            mgr = CheckpointManager(small_fs, torch.nn.Linear(16, 16), save_policy="never")
            mgr.save("latest", epoch=0, step=2, samples_seen=2)
        assert [e.info.manifest["step"] for e in list_checkpoints(small_fs, deep=True)] == [1]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=False)


@pytest.mark.parametrize("on_mismatch, outcome", [(None, "warn"), ("refuse", "refuse"), ("ignore", "ignore")])
def test_resume_is_gated_by_the_environment_policy(tmp_path, monkeypatch, on_mismatch, outcome):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    save_steps(tmp_path, [1])
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a determinism setting changed between runs
    messages = []
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(16, 16), env_policy=fp.Policy.load(on_mismatch=on_mismatch),
                            log=messages.append)
    try:
        if outcome == "refuse":
            with pytest.raises(EnvironmentRefused) as err:
                mgr.resume()
            assert err.value.exit_code == 1
            assert "determinism.cublas_workspace_config" in str(err.value) and "to allow it:" in str(err.value)
        else:
            info = mgr.resume()
            assert info.step == 1
            diff = [d for d in info.comparison.differences if d.field == "determinism.cublas_workspace_config"]
            assert diff and diff[0].severity == ("warn" if outcome == "warn" else "info")
            if outcome == "warn":
                assert any("cublas_workspace_config" in m for m in messages)
            # The resumed run opens a new lineage segment under the new environment.
            path = mgr.save("latest", epoch=0, step=2, samples_seen=2)
            manifest = __import__("reprotrain.checkpoint.reader", fromlist=["x"]).read_info(path).manifest
            assert [s["segment"] for s in manifest["lineage"]] == [0, 1]
            assert manifest["lineage"][0]["fingerprint_digest"] != manifest["lineage"][1]["fingerprint_digest"]
            assert len(manifest["environments"]) == 2
    finally:
        mgr.close()


def test_writer_listing_reads_only_new_or_replaced_checkpoints(tmp_path, monkeypatch):
    from reprotrain.checkpoint import reader as ckreader

    model = torch.nn.Linear(4, 2)
    mgr = CheckpointManager(tmp_path, model, save_policy="never", log=lambda m: None)
    first = mgr.save(epoch=0, step=1, samples_seen=1)
    second = mgr.save(epoch=0, step=2, samples_seen=2)
    reads = []
    real = ckreader.read_info
    monkeypatch.setattr(ckreader, "read_info", lambda path, **kw: reads.append(Path(path).name) or real(path, **kw))
    listed = mgr.run_dir.list_checkpoints()
    assert [e.path.name for e in listed] == [first.name, second.name] and reads == []
    # A checkpoint replaced by a rename (a new inode) is read again, and what it says now is what is listed.
    replacement = tmp_path / "replacement.tmp"
    replacement.write_bytes(b"not a checkpoint")
    os.replace(replacement, first)
    listed = mgr.run_dir.list_checkpoints()
    assert reads == [first.name]
    assert not next(e for e in listed if e.path.name == first.name).valid
    mgr.close()


def test_a_commit_seeds_the_listing_so_retention_reads_nothing(tmp_path, monkeypatch):
    from reprotrain.checkpoint import reader as ckreader

    mgr = CheckpointManager(tmp_path, torch.nn.Linear(4, 2), save_policy="never", log=lambda m: None)
    mgr.save(epoch=0, step=1, samples_seen=1)
    scans = []
    real = ckreader.scan_pickles
    monkeypatch.setattr(ckreader, "scan_pickles", lambda f, d: scans.append(1) or real(f, d))
    newest = mgr.save(epoch=0, step=2, samples_seen=2)
    assert scans == []  # the retention listing after the save re-read neither the new file nor the old one
    assert [e.path.name for e in mgr.run_dir.list_checkpoints()][-1] == newest.name
    mgr.close()
    # Any other reader still scans: the same file read afresh goes through the scanner.
    ckreader.read_info(newest)
    assert scans == [1]


@pytest.mark.parametrize("signed", [False, True])
def test_the_writers_own_listing_entry_is_what_a_reader_parses(tmp_path, monkeypatch, signed):
    """After a save the writer lists its new checkpoint from what the writer wrote, not by reading it back: that entry
    (manifest, zip directory, signature line, size) must be exactly what a reader parses from the file."""
    from reprotrain.checkpoint import signing
    from reprotrain.checkpoint.storage import base, local

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    mgr = CheckpointManager(tmp_path / "run", model, torch.optim.AdamW(model.parameters()), log=lambda m: None,
                            retention=RetentionPolicy(keep_last=5),
                            signing_key=signing.SigningKey.generate() if signed else None)

    def read_back(*args, **kwargs):
        raise AssertionError("the checkpoint just written was read back")

    monkeypatch.setattr(local, "read_entry", read_back)
    path = mgr.save(epoch=0, step=3, samples_seen=12)
    listed = {e.path.name: e for e in mgr.run_dir.list_checkpoints()}[path.name]
    mgr.close()
    parsed = base.read_entry(path, deep=False)
    assert listed.valid and parsed.valid
    assert listed.info.manifest == parsed.info.manifest
    assert listed.info.directory == parsed.info.directory
    assert listed.info.size == parsed.info.size == path.stat().st_size
    assert (listed.info.signature is not None) == signed
