"""The user task of tests/test_distributed.py (`--task distributed_tasks:digits_for_tests`, tests/ on PYTHONPATH).

One task name for every run, so that runs can resume each other's checkpoints. Test-only switches come from the
environment, which torchrun hands unchanged to every rank:

- REPROTRAIN_TEST_PID_DIR: each rank writes `rank<R>.pid` there (the test signals a given rank's process);
- REPROTRAIN_TEST_DELAY: seconds of delay per sample (so that a signal lands mid-epoch);
- REPROTRAIN_TEST_RANK1_CUBLAS: rank 1 sets CUBLAS_WORKSPACE_CONFIG to this value. torchrun gives every rank the
  same environment and the user task runs before the fingerprint is taken, so this is how one rank is made to
  differ (a determinism setting, as in a badly written job script);
- REPROTRAIN_TEST_KILL_PEER_AT_SAVE=N: rank 0 SIGKILLs rank 1 while taking the state for its N-th save, i.e.
  after the ranks agreed to save and before the commit vote;
- REPROTRAIN_TEST_SAVE_LOG: a directory; each sharded save appends "<thread name> <checkpoint name>" to
  `saves-rank<R>.txt` there (which thread committed it: the training thread or the background saver).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from reprotrain.training import Task
from reprotrain.training.tasks import digits
from test_training_faults import _Delayed


class _KillPeerOnSave(torch.nn.Module):
    """The model, whose N-th state_dict() (taken only by rank 0, only to save) SIGKILLs rank 1 first."""

    def __init__(self, inner, peer_pid_file: Path, at_save: int):
        super().__init__()
        self.inner, self.peer_pid_file, self.at_save, self.saves = inner, peer_pid_file, at_save, 0

    def forward(self, x):
        return self.inner(x)

    def state_dict(self, *args, **kwargs):
        self.saves += 1
        if self.saves == self.at_save:
            pid = int(self.peer_pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.01)
        return super().state_dict(*args, **kwargs)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie waits for torchrun to reap it
    except FileNotFoundError:
        return False


def _log_sharded_saves(directory: Path, rank: str) -> None:
    import threading

    from reprotrain.checkpoint import sharded

    save = sharded.save

    def logged(run_dir, name, *args, **kwargs):
        path = save(run_dir, name, *args, **kwargs)
        with open(directory / f"saves-rank{rank}.txt", "a") as f:
            f.write(f"{threading.current_thread().name} {name}\n")
        return path

    sharded.save = logged


def digits_for_tests(cfg) -> Task:
    rank = os.environ.get("RANK", "0")
    if os.environ.get("REPROTRAIN_TEST_SAVE_LOG"):
        _log_sharded_saves(Path(os.environ["REPROTRAIN_TEST_SAVE_LOG"]), rank)
    pid_dir = os.environ.get("REPROTRAIN_TEST_PID_DIR")
    if pid_dir:
        Path(pid_dir, f"rank{rank}.pid").write_text(str(os.getpid()))
    if rank == "1" and os.environ.get("REPROTRAIN_TEST_RANK1_CUBLAS"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = os.environ["REPROTRAIN_TEST_RANK1_CUBLAS"]
    task = digits(cfg)
    delay = float(os.environ.get("REPROTRAIN_TEST_DELAY", "0"))
    if delay:
        task.train_data = _Delayed(task.train_data, delay)
    kill_at = int(os.environ.get("REPROTRAIN_TEST_KILL_PEER_AT_SAVE", "0"))
    if kill_at and rank == "0":
        task.model = _KillPeerOnSave(task.model, Path(pid_dir, "rank1.pid"), kill_at)
    return task
