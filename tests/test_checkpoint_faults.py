"""Real processes, really killed or interrupted: the run directory always holds a valid checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprotrain.checkpoint import list_checkpoints, select_for_resume

CHILD = Path(__file__).parent / "scripts" / "checkpoint_child.py"


def start(run_dir: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), str(run_dir), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited early: {proc.wait()} {proc.stderr.read()}")
        if line.startswith("step ") and int(line.split()[1]) >= step:
            return int(line.split()[1])
    raise AssertionError("child did not reach the step in time")


def test_sigkill_at_random_instants_never_leaves_the_run_without_a_valid_checkpoint(tmp_path):
    """The child saves after every step; it is SIGKILLed at random instants (inside saves, renames, retention)."""
    rng = random.Random(1234)
    kills = 8
    last_valid_step = 0
    for attempt in range(kills):
        proc = start(tmp_path, "loop")
        wait_for_step(proc, last_valid_step + 1)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        entries = list_checkpoints(tmp_path, deep=True)
        assert all(e.valid for e in entries), [(e.path.name, e.problem) for e in entries if not e.valid]
        pick = select_for_resume(entries)
        assert pick is not None, f"kill {attempt}: no valid checkpoint left"
        step = pick.info.manifest["step"]
        assert step >= last_valid_step, "resume went backwards"
        last_valid_step = step
    assert last_valid_step > kills  # each restart resumed and made progress
    # Every unfinished `.partial` file a killed writer left is removed by the next writer, which says so on stderr.
    # One is planted (a writer killed mid-save, as above) so that the check never depends on where the kills fell.
    (tmp_path / ".step0000099999-latest.pth.4194304.0badc0de.partial").write_bytes(b"half a checkpoint")
    leftovers = sorted(p.name for p in tmp_path.glob(".*.partial"))
    proc = start(tmp_path, "loop")
    wait_for_step(proc, last_valid_step + 1)
    proc.kill()
    _, err = proc.communicate(timeout=60)
    remaining = [p.name for p in tmp_path.glob(".*.partial") if f".{proc.pid}." not in p.name]
    assert remaining == [], f"left behind by earlier writers and not removed: {remaining}"
    assert f"removed {len(leftovers)} unfinished checkpoint file(s) left by an earlier crash: " \
           f"{', '.join(leftovers)}" in err, err


@pytest.mark.parametrize("sig, code, reason", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "preempted")])
def test_signal_saves_interrupted_checkpoint_and_exits_with_its_code(tmp_path, sig, code, reason):
    proc = start(tmp_path, "guard")
    wait_for_step(proc, 3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    entries = list_checkpoints(tmp_path, deep=True)
    [entry] = [e for e in entries if e.info.manifest["kind"] == "interrupted"]
    manifest = entry.info.manifest
    assert manifest["lineage"][-1]["end_reason"] == reason
    assert manifest["resumable"] and manifest["step"] >= 3
    assert select_for_resume(entries).path == entry.path
    assert "Traceback" not in err

    # The next process resumes from it and the lineage gets a second segment.
    proc = start(tmp_path, "guard")
    wait_for_step(proc, manifest["step"] + 2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    newest = select_for_resume(list_checkpoints(tmp_path))
    assert [s["segment"] for s in newest.info.manifest["lineage"]] == [0, 1]
    assert newest.info.manifest["lineage"][1]["first_step"] == manifest["step"]


def test_second_sigint_stops_at_once(tmp_path):
    """The first SIGINT waits for the step in flight (60 s here); the second one stops without waiting. In a
    library script that is a KeyboardInterrupt (no os._exit outside the CLI): uncaught, Python ends the process
    by SIGINT, without a save."""
    proc = start(tmp_path, "slow")
    wait_for_step(proc, 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # far less than the step in flight
    assert proc.returncode == -signal.SIGINT, err
    assert "SIGINT again: stopping now without a checkpoint" in err
    assert not any(e.info and e.info.manifest["kind"] in ("interrupted", "emergency")
                   for e in list_checkpoints(tmp_path))


def test_exception_saves_non_resumable_emergency_and_reraises(tmp_path):
    proc = start(tmp_path, "raise")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "RuntimeError: broken batch at step 5" in err
    [entry] = list_checkpoints(tmp_path, deep=True)
    manifest = entry.info.manifest
    assert manifest["kind"] == "emergency" and not manifest["resumable"]
    assert manifest["reason"].startswith("RuntimeError: broken batch at step 5")
    assert manifest["lineage"][-1]["end_reason"] == "error"
    assert select_for_resume([entry]) is None


def test_sigint_while_frozen_between_steps_still_saves(tmp_path):
    """A signal that arrives while the process is stopped is handled when it continues."""
    proc = start(tmp_path, "guard")
    wait_for_step(proc, 2)
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert any(e.info.manifest["kind"] == "interrupted" for e in list_checkpoints(tmp_path))
