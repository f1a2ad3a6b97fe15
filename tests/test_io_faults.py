"""I/O faults not covered by test_checkpoint_store.py (disk full and read-only there, on a real tmpfs).

Here: a file size limit enforced by the kernel (RLIMIT_FSIZE, EFBIG), errors injected at the write and fsync
boundaries of a real child process (EIO), a slow write path killed mid-save, and files deleted or replaced
under a reader. Every case ends with a clear one-line error (or a clean skip of the vanished file) and the
previous checkpoint valid.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, list_checkpoints, read_info, select_for_resume
from reprotrain.checkpoint import reader
from reprotrain.checkpoint.manifest import CheckpointInfo, CorruptCheckpoint
from reprotrain.audit import inspect_path

# For each FAULT (in its own run directory): save step 1, install the fault, try to save step 2 with a 1 MiB model,
# undo the fault; print one JSON line per fault. One child for all faults: a torch import per fault is slow.
CHILD = textwrap.dedent("""
    import errno, json, os, resource, signal, sys, time
    import torch
    from reprotrain.checkpoint import CheckpointManager, RetentionPolicy
    from reprotrain.checkpoint.storage import local as store  # the local store (its commit writes through _FdWriter)
    from reprotrain.errors import ReprotrainError

    base, faults = sys.argv[1], sys.argv[2:]
    real_fsync = os.fsync
    real_writer = store._FdWriter

    class FaultyFile:
        # The file object the local store's commit writes through (_FdWriter), with a fault at the write boundary.
        def __init__(self, raw, fault):
            self.raw, self.fault, self.written = raw, fault, 0
        def write(self, data):
            if self.fault == "eio-write" and self.written > 100_000:
                raise OSError(errno.EIO, "Input/output error")
            if self.fault == "slow":
                time.sleep(0.02)
            n = self.raw.write(data)
            self.written += n
            return n
        def __getattr__(self, name):
            return getattr(self.raw, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.raw.close()

    for fault in faults:
        run_dir = os.path.join(base, fault)
        mgr = CheckpointManager(run_dir, torch.nn.Linear(16, 16), save_policy="never",
                                retention=RetentionPolicy(keep_last=5))
        mgr.save("latest", epoch=0, step=1, samples_seen=1)
        mgr.model = torch.nn.Linear(512, 512)
        if fault == "fsize":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed by the signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        elif fault in ("eio-write", "slow"):
            store._FdWriter = lambda fd, fault=fault: FaultyFile(real_writer(fd), fault)
        elif fault in ("eio-fsync", "eio-dirfsync"):
            calls = []
            def fsync(fd, fault=fault, calls=calls):
                calls.append(fd)
                if len(calls) == (1 if fault == "eio-fsync" else 2):  # 1: the file, 2: the directory after rename
                    raise OSError(errno.EIO, "Input/output error")
                return real_fsync(fd)
            os.fsync = fsync
        print("saving", flush=True)
        try:
            mgr.save("latest", epoch=0, step=2, samples_seen=2)
            result = {"fault": fault, "error": None}
        except ReprotrainError as exc:
            result = {"fault": fault, "error": str(exc), "exit_code": exc.exit_code}
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            os.fsync = real_fsync
            store._FdWriter = real_writer
            mgr.close()
        print(json.dumps(result), flush=True)
""")
WRITE_FAULTS = ("fsize", "eio-write", "eio-fsync", "eio-dirfsync")


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("faults")
    out = subprocess.run([sys.executable, "-c", CHILD, str(base), *WRITE_FAULTS], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return base, {r["fault"]: r for r in results}


def valid_steps(run_dir: Path) -> list[int]:
    entries = list_checkpoints(run_dir, deep=True)
    assert all(e.valid for e in entries), [(e.path.name, e.problem) for e in entries if not e.valid]
    return [e.info.manifest["step"] for e in entries]


@pytest.mark.parametrize("fault, message", [
    ("fsize", "file too large for this file system or limit while writing step0000000002-latest.pth; "
              "previous checkpoints are intact"),
    ("eio-write", "I/O error while writing step0000000002-latest.pth; previous checkpoints are intact"),
    ("eio-fsync", "I/O error while writing step0000000002-latest.pth; previous checkpoints are intact"),
])
def test_write_path_fault_is_a_clear_error_and_the_previous_checkpoint_stays(fault_runs, fault, message):
    base, results = fault_runs
    tmp_path, result = base / fault, results[fault]
    assert result["error"] is not None and result["error"].endswith(message), result
    assert str(tmp_path) in result["error"] and "\n" not in result["error"]
    assert valid_steps(tmp_path) == [1]
    assert not list(tmp_path.glob(".*.partial"))  # the unfinished file was removed on the error path
    # The run goes on: the next writer resumes step 1.
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(16, 16))
    assert mgr.resume().step == 1
    mgr.close()


def test_directory_fsync_failure_after_the_rename_leaves_only_valid_checkpoints(fault_runs):
    """The new file is already in place when the directory fsync fails: the save reports the error, and every
    file the directory shows (the old one and the renamed new one) is complete."""
    base, results = fault_runs
    tmp_path, result = base / "eio-dirfsync", results["eio-dirfsync"]
    assert result["error"].endswith("I/O error while writing step0000000002-latest.pth; previous checkpoints are "
                                    "intact"), result
    assert valid_steps(tmp_path) == [1, 2]
    assert select_for_resume(list_checkpoints(tmp_path)).info.manifest["step"] == 2


def test_slow_write_path_killed_mid_save_keeps_the_previous_checkpoint(tmp_path):
    tmp_path = tmp_path / "slow"  # the child's fault name is its run directory's name
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path.parent), tmp_path.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".step0000000002-latest.pth.*.partial")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.05))  # somewhere inside the slow write
        partials = list(tmp_path.glob(".*.partial"))
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert partials, "the kill was meant to land during the slow write"
    assert valid_steps(tmp_path) == [1]
    messages = []
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(16, 16), log=messages.append)
    assert mgr.resume().step == 1
    mgr.close()
    assert not list(tmp_path.glob(".*.partial"))
    assert any("removed 1 unfinished checkpoint file(s)" in m for m in messages)


# --------------------------------------------------------------------------- deleted or replaced under a reader


def _save(run_dir: Path, steps, size: int = 16) -> list[Path]:
    torch.manual_seed(0)
    mgr = CheckpointManager(run_dir, torch.nn.Linear(size, size), save_policy="never",
                            retention=RetentionPolicy(keep_last=100))
    paths = []
    for step in steps:
        torch.nn.init.normal_(mgr.model.weight)  # distinct weights per step
        paths.append(mgr.save("latest", epoch=0, step=step, samples_seen=step))
    mgr.close()
    return paths


def test_resume_skips_a_checkpoint_deleted_between_listing_and_loading(tmp_path):
    paths = _save(tmp_path, [1, 2, 3])
    entries = list_checkpoints(tmp_path)  # listed (manifests read), not yet re-hashed
    paths[2].unlink()
    reports = []
    pick = select_for_resume(entries, report=reports.append)
    assert pick.path == paths[1]
    assert reports == [f"skipping damaged checkpoint {paths[2].name}: no such file"]


def test_integrity_check_of_a_replaced_file_never_passes_with_the_old_manifest(tmp_path):
    """A reader that read A's manifest and then meets B at the same path must not vouch for B with A's digests."""
    a, b = _save(tmp_path, [1, 2])
    info = read_info(a)
    os.replace(b, a)
    result = reader.check_integrity(info)
    assert not result.ok and result.problems
    with pytest.raises(CorruptCheckpoint, match="no such file"):
        reader.check_integrity(CheckpointInfo(b, info.manifest, info.directory, info.size))


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process PID has PATH open (one of its /proc/PID/fd links names it)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def _verify_process(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reprotrain", "verify", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_verify_while_the_file_is_unlinked_mid_read_is_ok_or_one_clear_line(tmp_path):
    """A real `reprotrain verify` process re-hashing a 64 MiB file that is unlinked at a random instant: either it
    read the whole (still open) file and says ok, or it never opened it and says `no such file`; never a traceback.
    Then the instant is pinned: the file is unlinked while the reader is seen holding it open (the reader stopped
    meanwhile), and the reader must finish the file it opened and say ok."""
    [path] = _save(tmp_path / "run", [1], size=4096)
    rng = random.Random(3)
    for attempt in range(3):
        copy = tmp_path / f"copy{attempt}.pth"
        shutil.copyfile(path, copy)
        proc = _verify_process(copy)
        time.sleep(rng.uniform(0.2, 2.5))
        copy.unlink()
        out, err = proc.communicate(timeout=300)
        assert "Traceback" not in err, err
        if proc.returncode != 0:
            assert proc.returncode == 2, (out, err)
            assert f"{copy}" in out + err and "no such file" in out + err, (out, err)

    for attempt in range(5):
        copy = tmp_path / f"pinned{attempt}.pth"
        shutil.copyfile(path, copy)
        proc = _verify_process(copy)
        while proc.poll() is None and not _holds_open(proc.pid, copy):
            time.sleep(0.001)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)
        pinned = proc.poll() is None and _holds_open(proc.pid, copy)
        if pinned:
            copy.unlink()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
        if pinned:
            assert proc.returncode == 0 and out.startswith(f"OK       {copy}: ok: integrity verified"), (out, err)
            return
    pytest.fail("the verify process was never seen holding the file open (5 tries)")


def test_inspect_of_a_file_replaced_after_its_integrity_check_reports_one_file(tmp_path, monkeypatch):
    """Another writer atomically replaces the file right after inspect's integrity check (the instant is pinned
    by wrapping the real check, so that the outcome does not depend on scheduling): inspect must either refuse
    in one line or report the manifest and the tensors of one and the same file."""
    a, b = _save(tmp_path / "run", [1, 2], size=256)
    digests = {}
    for path in (a, b):
        report = inspect_path(path)
        digests[report["manifest"]["step"]] = report["state_digest"]
    target = tmp_path / "swapped.pth"
    shutil.copyfile(a, target)
    real_check = reader.check_integrity

    def check_then_replace(info, *args):
        result = real_check(info, *args)
        shutil.copyfile(b, tmp_path / "swapped.tmp")
        os.replace(tmp_path / "swapped.tmp", target)
        return result

    monkeypatch.setattr(reader, "check_integrity", check_then_replace)
    try:
        report = inspect_path(target)
    except CorruptCheckpoint as exc:
        assert "\n" not in exc.message
        return
    assert report["state_digest"] == digests[report["manifest"]["step"]], \
        "inspect reported one file's manifest with another file's tensors"
