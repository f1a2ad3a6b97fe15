"""`reprotrain train` end to end: real child processes, real signals, real checkpoints.

The tasks below are user tasks (`--task test_training_faults:<name>`, this folder on PYTHONPATH): digits with a
small per-sample delay so that a signal lands mid-epoch, and digits with one broken or NaN sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, run_cli
from reprotrain.training import Task, data
from reprotrain.training.tasks import digits

TESTS_DIR = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT / "examples")])}
# Two short epochs with a checkpoint every 10 steps: enough to interrupt mid-epoch and resume.
BASE = ["--task", "test_training_faults:slow_digits", "--epochs", "2", "--batch-size", "64", "--save", "steps:10",
        "--log-every", "1", "--quiet"]


class _Delayed(torch.utils.data.Dataset):
    def __init__(self, inner, delay_s):
        self.inner, self.delay_s = inner, delay_s

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        time.sleep(self.delay_s)
        return self.inner[index]


class _Poisoned(torch.utils.data.Dataset):
    """Sample `index` is replaced: a wrongly shaped image (collate fails) or NaNs (loss is not finite)."""

    def __init__(self, inner, index, kind):
        self.inner, self.index, self.kind = inner, index, kind

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        x, y = self.inner[index]
        if index == self.index:
            x = torch.zeros(2, 8, 8) if self.kind == "shape" else torch.full_like(x, float("nan"))
        return x, y


def slow_digits(cfg) -> Task:
    task = digits(cfg)
    task.train_data = _Delayed(task.train_data, float(cfg.extra.get("delay", 0.0005)))
    return task


def _poisoned(cfg, kind) -> Task:
    task = digits(cfg)
    # Poison the first sample of batch 10 of epoch 0: after the steps:5 checkpoints, well before the epoch ends.
    order = data.EpochBatchSampler(len(task.train_data), cfg.batch_size, seed=cfg.seed, epoch=0)
    task.train_data = _Poisoned(task.train_data, list(order)[10][0], kind)
    return task


def broken_batch_digits(cfg) -> Task:
    return _poisoned(cfg, "shape")


def nan_digits(cfg) -> Task:
    return _poisoned(cfg, "nan")


# ----------------------------------------------------------------------------------------------- helpers


def _train(run_dir, *args, env=None):
    return run_cli("train", "--run-dir", str(run_dir), *args, env={**ENV, **(env or {})}, timeout=240)


def _steps_logged(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if line.endswith("}") and json.loads(line)["kind"] == "step")


def _start(run_dir, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reprotrain", "train", "--run-dir", str(run_dir), *args],
                            env={**os.environ, **ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_at_step(proc: subprocess.Popen, run_dir: Path, step: int, sig: int) -> None:
    deadline = time.monotonic() + 120
    while _steps_logged(run_dir) < step:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "child never reached the step"
        time.sleep(0.005)
    os.kill(proc.pid, sig)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")["state"]


def _assert_same_tensors(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _checkpoints(run_dir: Path, kind: str | None = None) -> list[dict]:
    """Manifests (with their path) of the valid checkpoints in the run directory, oldest first."""
    from reprotrain.checkpoint import list_checkpoints

    return [{**e.info.manifest, "path": e.path} for e in list_checkpoints(run_dir)
            if e.valid and kind in (None, e.info.manifest["kind"])]


def _final_state(run_dir: Path) -> dict:
    final = _checkpoints(run_dir)[-1]
    assert final["epoch"] == 2 and final["kind"] == "latest", final
    return _state(final["path"])


def _assert_bit_identical(run_dir: Path, reference_dir: Path) -> None:
    got, want = _final_state(run_dir), _final_state(reference_dir)
    for component in ("model", "optimizer"):
        _assert_same_tensors(got[component], want[component], component)


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict:
    """Uninterrupted runs (in this process: same code, same single thread) for 0 and 2 workers."""
    from reprotrain.training import train

    runs = {}
    for workers in (0, 2):
        run_dir = tmp_path_factory.mktemp(f"reference-w{workers}")
        options = {"task": "test_training_faults:slow_digits", "epochs": 2, "batch_size": 64, "save": "steps:10",
                   "log_every": 1, "num_workers": workers}
        train(run_dir, options=options, quiet=True, log=lambda message: None)
        runs[workers] = run_dir
    return runs


@pytest.mark.parametrize("sig, workers", [
    (signal.SIGINT, 0), (signal.SIGTERM, 0), (signal.SIGTERM, 2), (signal.SIGKILL, 0), (signal.SIGKILL, 2)],
    ids=["SIGINT-w0", "SIGTERM-w0", "SIGTERM-w2", "SIGKILL-w0", "SIGKILL-w2"])
def test_interrupted_mid_epoch_then_resumed_is_bit_exact(tmp_path, references, sig, workers):
    run_dir = tmp_path / "run"
    args = [*BASE, "--num-workers", str(workers)]
    proc = _start(run_dir, *args)
    _signal_at_step(proc, run_dir, 12, sig)
    _, stderr = proc.communicate(timeout=120)
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[sig]
    assert proc.returncode == expected, stderr
    if sig != signal.SIGKILL:  # after SIGKILL, orphaned DataLoader workers may print their own broken-pipe noise
        assert "Traceback" not in stderr, stderr
    if sig == signal.SIGKILL:
        resume_from = _checkpoints(run_dir)[-1]  # the last committed one
    else:
        (resume_from,) = _checkpoints(run_dir, "interrupted")
        assert resume_from["reason"] == f"received {sig.name}"
        assert "run the same command again to resume" in stderr
    batches_per_epoch = -(-1437 // 64)
    assert resume_from["epoch"] == 0 and 0 < resume_from["position"]["batch"] < batches_per_epoch, resume_from

    result = _train(run_dir, *args)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {resume_from['path']}" in result.stderr
    _assert_bit_identical(run_dir, references[workers])
    segments = _checkpoints(run_dir)[-1]["lineage"]
    assert len(segments) == 2 and segments[0]["end_reason"] == (
        "lost" if sig == signal.SIGKILL else {"SIGINT": "interrupted", "SIGTERM": "preempted"}[sig.name])


def test_second_sigint_exits_at_once(tmp_path):
    config = tmp_path / "slow.yaml"
    config.write_text("extra: {delay: 0.01}\n")  # ~0.6 s per batch: both signals land inside one step
    run_dir = tmp_path / "run"
    proc = _start(run_dir, *BASE, "--config", str(config))
    _signal_at_step(proc, run_dir, 1, signal.SIGINT)
    for line in proc.stderr:
        if "SIGINT received" in line:
            break
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "saved" not in stderr and not _checkpoints(run_dir, "interrupted")


def test_broken_batch_saves_emergency_keeps_resumable_and_fails_clearly(tmp_path):
    run_dir = tmp_path / "run"
    result = _train(run_dir, "--task", "test_training_faults:broken_batch_digits", "--save", "steps:5",
                    "--batch-size", "64", "--epochs", "1", "--quiet")
    assert result.returncode == 4, result.stderr
    _no_traceback(result)
    error = [line for line in result.stderr.splitlines() if line.startswith("reprotrain: error:")]
    assert len(error) == 1 and "training failed at epoch 1, step 10: RuntimeError" in error[0]
    (emergency,) = _checkpoints(run_dir, "emergency")
    assert emergency["resumable"] is False and "RuntimeError" in emergency["reason"]
    resumable = [c for c in _checkpoints(run_dir) if c["kind"] != "emergency"]
    assert resumable and resumable[-1]["step"] == 10 and resumable[-1]["resumable"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "error" and lines[-1]["step"] == 10


def test_crashed_dataloader_worker_is_an_error(tmp_path):
    config = tmp_path / "slow.yaml"
    config.write_text("extra: {delay: 0.002}\n")
    run_dir = tmp_path / "run"
    proc = _start(run_dir, *BASE, "--config", str(config), "--num-workers", "2")
    deadline = time.monotonic() + 120
    while _steps_logged(run_dir) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(workers) >= 2, workers
    os.kill(int(workers[0]), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4, stderr
    assert "Traceback" not in stderr and "DataLoader worker" in stderr
    (emergency,) = _checkpoints(run_dir, "emergency")
    assert emergency["resumable"] is False


def test_non_finite_loss_stops_before_spoiling_weights(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--task", "test_training_faults:nan_digits", "--save", "steps:5", "--batch-size", "64", "--epochs", "1",
            "--quiet"]
    result = _train(run_dir, *args)
    assert result.returncode == 4, result.stderr
    _no_traceback(result)
    assert "non-finite loss (nan) at epoch 1, batch 11" in result.stderr
    (emergency,) = _checkpoints(run_dir, "emergency")
    good = [c for c in _checkpoints(run_dir) if c["kind"] != "emergency"][-1]
    assert emergency["resumable"] is False and emergency["step"] == good["step"] == 10
    # The weights in the emergency checkpoint are the last good ones: the NaN step never reached them.
    _assert_same_tensors(_state(emergency["path"])["model"], _state(good["path"])["model"])
    assert all(torch.isfinite(t).all() for t in _state(emergency["path"])["model"].values())
    # The next start resumes the last good checkpoint, never the emergency one.
    again = _train(run_dir, *args)
    assert f"resuming from {good['path']}" in again.stderr
