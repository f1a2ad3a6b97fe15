"""Concurrency on one run directory: two trainers, verify during saves, `ls` while retention deletes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import run_cli
from reprotrain.checkpoint import list_checkpoints, select_for_resume
from reprotrain.checkpoint.manifest import CorruptCheckpoint
from reprotrain.audit import verify_paths

TESTS_DIR = Path(__file__).resolve().parent
TRAIN = ["train", "--task", "test_training_faults:slow_digits", "--epochs", "1", "--batch-size", "64", "--save",
         "steps:5", "--quiet"]


def test_second_trainer_on_the_same_run_directory_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    first = subprocess.Popen([sys.executable, "-m", "reprotrain", *TRAIN, "--run-dir", str(run_dir)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        # metrics.jsonl is opened after the writer lock is taken: from then on the first trainer owns the run.
        while not (run_dir / "metrics.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        os.kill(first.pid, signal.SIGSTOP)  # hold it inside its run, whatever the machine's load
        try:
            second = run_cli(*TRAIN, "--run-dir", str(run_dir), env={"PYTHONPATH": str(TESTS_DIR)})
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (f"reprotrain: error: {run_dir}: run directory is in use by another writer "
                                     f"(pid {first.pid} on {os.uname().nodename} since "
                                     f"{second.stderr.split(' since ')[1].split(')')[0]}); one writer per run "
                                     "directory")
    assert first.returncode == 0, err
    entries = list_checkpoints(run_dir, deep=True)
    assert entries and all(e.valid for e in entries)
    # The refused trainer wrote nothing: one `start` line, no second segment.
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("start") == 1 and "resume" not in kinds


WRITER = textwrap.dedent("""
    import sys, torch
    from reprotrain.checkpoint import CheckpointManager, RetentionPolicy
    mgr = CheckpointManager(sys.argv[1], torch.nn.Linear(1024, 1024), save_policy="never",
                            retention=RetentionPolicy(keep_last=2))
    step = 0
    while True:
        step += 1
        torch.nn.init.normal_(mgr.model.weight)
        mgr.save("latest", epoch=0, step=step, samples_seen=step)
        print(step, flush=True)
""")


def test_verify_and_ls_while_a_writer_saves_and_retention_deletes(tmp_path):
    """Every checkpoint a reader can see is complete (writes go to hidden .partial files); a file that retention
    deleted under the reader is reported as gone (`no such file`), never as damaged."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    verified = vanished = 0
    try:
        assert writer.stdout.readline().strip() == "1"
        end = time.monotonic() + 6
        while time.monotonic() < end:
            for path in sorted(tmp_path.glob("*.pth")):
                try:
                    [result] = verify_paths([path])
                except CorruptCheckpoint as exc:  # deleted between the manifest read and the re-hash
                    assert exc.message == "no such file" and not path.exists(), exc
                    vanished += 1
                    continue
                if result.exit_code == 0:
                    verified += 1
                else:
                    assert result.reason == "no such file" and not path.exists(), result
                    vanished += 1
        listings = [run_cli("ls", "--json", str(tmp_path)) for _ in range(2)]
        assert writer.poll() is None  # the writer was saving all along
    finally:
        writer.kill()
        writer.communicate()
    assert verified > 0
    for listing in listings:
        assert listing.returncode == 0, listing.stderr
        doc = json.loads(listing.stdout)
        for row in doc["checkpoints"]:
            assert row["valid"] or row["problem"] == "no such file", row
        assert doc["resume"] is not None
    pick = select_for_resume(list_checkpoints(tmp_path, deep=True))
    assert pick is not None and pick.valid
