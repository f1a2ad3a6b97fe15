"""examples/own_loop.py, the library API in a user's loop: interrupted by a real SIGINT, resumed, bit-exact."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from reprotrain.checkpoint import list_checkpoints, select_for_resume
from reprotrain.audit import training_state_digest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"


def run_example(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(EXAMPLE), "--run-dir", str(run_dir), "--epochs", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_digest(run_dir: Path) -> str:
    pick = select_for_resume(list_checkpoints(run_dir))
    return training_state_digest(torch.load(pick.path, weights_only=True)["state"])


def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path):
    straight = run_example(tmp_path / "straight")
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    broken = tmp_path / "broken"
    proc = run_example(broken, "--step-delay", "0.05")  # slow enough that the signal lands mid-run
    deadline = time.monotonic() + 120
    while not any(e.valid for e in list_checkpoints(broken)) if broken.exists() else True:
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint before the run ended"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    interrupted = select_for_resume(list_checkpoints(broken))
    assert interrupted.info.manifest["kind"] == "interrupted"
    assert interrupted.info.manifest["step"] < 64  # it stopped before the end (2 epochs of 32 steps)

    resumed = run_example(broken)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    assert final_digest(broken) == final_digest(tmp_path / "straight")
