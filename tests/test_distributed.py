"""`reprotrain train` under real torchrun: two CPU processes, gloo, real signals, real checkpoints.

Every run trains the bundled digits task through `distributed_tasks:digits_for_tests` (tests/distributed_tasks.py)
with 32 samples per rank and step: 23 steps per epoch at world size 2 (1438 training samples), 45 at world size 1.
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
from reprotrain.checkpoint import state as ckstate, store

TESTS_DIR = Path(__file__).resolve().parent
TASK = ["--task", "distributed_tasks:digits_for_tests", "--batch-size", "32", "--save", "steps:10",
        "--keep-last", "20", "--log-every", "1", "--quiet"]
N_TRAIN = 1438
STEPS_W2 = 23  # ceil(1438 / 64)


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def torchrun(nproc: int, *args: str, max_restarts: int = 0, **env) -> subprocess.Popen:
    """`python -m torch.distributed.run --standalone` running `-m reprotrain train ARGS` (a free port is picked)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", str(max_restarts), "--monitor-interval", "0.2", "-m", "reprotrain", "train", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(**env),
                            cwd=PROJECT_ROOT)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"torchrun exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def reached_step(run_dir: Path, step: int):
    def check():
        path = run_dir / "metrics.jsonl"
        return path.exists() and any(m.get("step", 0) >= step for m in metrics(run_dir) if m["kind"] == "step")
    return check


def checkpoints(run_dir: Path) -> list[store.Entry]:
    return [e for e in store.list_checkpoints(run_dir) if e.valid]


def newest(run_dir: Path, kind: str = "latest") -> store.Entry:
    return max((e for e in checkpoints(run_dir) if e.info.manifest["kind"] == kind),
               key=lambda e: e.info.manifest["step"])


def model_state(entry: store.Entry) -> dict:
    return ckstate.load(entry.path)["state"]["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def pid_of(pid_dir: Path, rank: int) -> int:
    return int((pid_dir / f"rank{rank}.pid").read_text())


def test_train_warns_about_rank1_and_sigterm_to_one_rank_resumes_bit_exactly(tmp_path):
    # Reference: uninterrupted, rank 1 with another CUBLAS_WORKSPACE_CONFIG (a warning by the default policy).
    reference = tmp_path / "reference"
    code, out = finish(torchrun(2, "--run-dir", str(reference), "--epochs", "2", *TASK,
                                REPROTRAIN_TEST_RANK1_CUBLAS=":4096:8"))
    assert code == 0, out
    assert "rank 1 differs from rank 0 (warnings)" in out and "determinism.cublas_workspace_config" in out
    final = newest(reference).info.manifest
    assert final["step"] == 2 * STEPS_W2 and final["samples_seen"] == 2 * N_TRAIN
    assert [seg["world_size"] for seg in final["lineage"]] == [2]
    assert final["position"] == {"epoch": 2, "batch": 0, "sample": 0, "world_size": 2}

    # SIGTERM to rank 1 only, mid-epoch: both ranks stop at the same step boundary, one `interrupted` checkpoint.
    run, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    proc = torchrun(2, "--run-dir", str(run), "--epochs", "2", *TASK, REPROTRAIN_TEST_PID_DIR=pids,
                    REPROTRAIN_TEST_DELAY="0.002")
    wait_for(reached_step(run, 7), proc, "step 7")
    os.kill(pid_of(pids, 1), signal.SIGTERM)
    code, out = finish(proc)
    # Both workers exit 143; torchrun reports the failed workers and exits 1 (docs/distributed.md).
    assert code == 1, out
    assert "rank 1: SIGTERM received" in out
    assert "reprotrain: SIGTERM: saved" in out and "rank 1: SIGTERM: saved" in out, out
    assert out.count("exiting with code 143") == 2, out
    interrupted = [e for e in checkpoints(run) if e.info.manifest["kind"] == "interrupted"]
    assert len(interrupted) == 1, out
    stopped = interrupted[0].info.manifest
    assert 7 <= stopped["step"] < STEPS_W2 and stopped["lineage"][-1]["end_reason"] == "preempted"
    assert [m for m in metrics(run) if m["kind"] == "interrupted"][0]["signal"] == "SIGTERM"

    code, out = finish(torchrun(2, "--run-dir", str(run), *TASK))
    assert code == 0, out
    assert f"continuing epoch 1 of 2 at batch {stopped['position']['batch']}" in out
    done = newest(run).info.manifest
    assert done["step"] == 2 * STEPS_W2 and done["samples_seen"] == 2 * N_TRAIN
    assert [(s["world_size"], s["end_reason"]) for s in done["lineage"]] == [(2, "preempted"), (2, "completed")]
    assert_same_weights(model_state(newest(run)), model_state(newest(reference)))


def test_sigkill_to_a_worker_with_max_restarts_resumes_the_last_committed_checkpoint(tmp_path):
    run, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    proc = torchrun(2, "--run-dir", str(run), "--epochs", "2", *TASK, max_restarts=1, REPROTRAIN_TEST_PID_DIR=pids,
                    REPROTRAIN_TEST_DELAY="0.002")
    wait_for(reached_step(run, 13), proc, "step 13")
    killed = pid_of(pids, 1)
    os.kill(killed, signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    assert pid_of(pids, 1) != killed  # the group was restarted by torchrun, not by a person
    resumes = [m for m in metrics(run) if m["kind"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] in (10, 20) and resumes[0]["world_size"] == 2
    done = newest(run).info.manifest
    assert done["step"] == 2 * STEPS_W2 and done["samples_seen"] == 2 * N_TRAIN
    assert [s["world_size"] for s in done["lineage"]] == [2, 2]
    assert done["lineage"][0]["end_reason"] == "lost" and done["lineage"][0]["last_step"] == resumes[0]["step"]
    assert done["lineage"][1]["resumed_from"] == f"step{resumes[0]['step']:010d}-latest.pth"


def test_resume_at_world_size_2_to_1_and_1_to_2(tmp_path):
    first, second, third = tmp_path / "w2", tmp_path / "w1", tmp_path / "w2again"
    code, out = finish(torchrun(2, "--run-dir", str(first), "--epochs", "1", *TASK))
    assert code == 0, out
    mid = next(e for e in checkpoints(first) if e.info.manifest["step"] == 10)
    assert mid.info.manifest["position"] == {"epoch": 0, "batch": 20, "sample": 640, "world_size": 2}

    # 2 -> 1: a plain process (no torchrun) continues the same epoch order at sample 640.
    result = run_cli("train", "--run-dir", str(second), "--resume", str(mid.path), "--epochs", "2", *TASK,
                     env={"PYTHONPATH": str(TESTS_DIR)}, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert "world size changes from 2 to 1: the effective batch goes from 32x2 = 64 to 32x1 = 32" in result.stderr
    assert "epoch 1 continues at sample 640 of 1438" in result.stderr
    done = newest(second).info.manifest
    steps_w1 = -(-N_TRAIN // 32)
    assert done["step"] == 10 + (steps_w1 - 20) + steps_w1 and done["samples_seen"] == 2 * N_TRAIN
    assert [s["world_size"] for s in done["lineage"]] == [2, 1]

    # 1 -> 2: torchrun continues a single-process checkpoint taken mid-epoch (sample 960 = 640 + 10 x 32).
    mid1 = next(e for e in checkpoints(second) if e.info.manifest["step"] == 20)
    assert mid1.info.manifest["position"] == {"epoch": 0, "batch": 30}
    code, out = finish(torchrun(2, "--run-dir", str(third), "--resume", str(mid1.path), *TASK))
    assert code == 0, out
    assert "world size changes from 1 to 2" in out and "continues at sample 960 of 1438" in out
    done = newest(third).info.manifest
    assert done["step"] == 20 + -(-(N_TRAIN - 960) // 64) + STEPS_W2 and done["samples_seen"] == 2 * N_TRAIN
    assert [s["world_size"] for s in done["lineage"]] == [2, 1, 2]
    assert [m for m in metrics(third) if m["kind"] == "resume"][0]["world_size"] == 2


def test_rank_fingerprint_refused_by_policy_names_the_rank(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("determinism.cublas_workspace_config: refuse\n")
    run = tmp_path / "run"
    code, out = finish(torchrun(2, "--run-dir", str(run), "--epochs", "1", "--policy", str(policy), *TASK,
                                REPROTRAIN_TEST_RANK1_CUBLAS=":4096:8"))
    assert code == 1, out
    assert "rank 1 differs from rank 0 and the policy refuses it" in out
    assert "determinism.cublas_workspace_config" in out
    assert f'File "{PROJECT_ROOT / "reprotrain"}' not in out  # one-line errors; torchrun prints its own traceback
    assert not checkpoints(run)


def test_a_rank_dying_mid_save_leaves_the_previous_checkpoint_resumable(tmp_path):
    run, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    # Saves at steps 10 and 20; rank 1 dies while rank 0 takes the state for the second one.
    code, out = finish(torchrun(2, "--run-dir", str(run), "--epochs", "2", *TASK, REPROTRAIN_TEST_PID_DIR=pids,
                                REPROTRAIN_TEST_KILL_PEER_AT_SAVE="2"))
    assert code == 1, out
    resumable = [e for e in checkpoints(run) if e.resumable]
    assert [e.info.manifest["step"] for e in resumable] == [10], out
    assert not list(run.glob(f"*{store.PARTIAL_SUFFIX}"))
    assert store.select_for_resume(store.list_checkpoints(run)).info.manifest["step"] == 10


def test_ddp_checkpoints_are_signed_and_a_trusted_resume_skips_a_forged_one(tmp_path):
    """Signing under torchrun: the writer rank signs every checkpoint; every rank resuming with trusted keys checks
    the signature over the tensors and falls back past a newest checkpoint whose tensors were changed with every
    CRC-32 kept (tests/test_signing.py's forgery)."""
    from reprotrain.checkpoint import signing
    from test_signing import _forge_tensor

    key = tmp_path / "key"
    signing.write_key_pair(key)
    run = tmp_path / "run"
    code, out = finish(torchrun(2, "--run-dir", str(run), "--epochs", "1", "--sign-key", str(key), *TASK))
    assert code == 0, out
    saved = checkpoints(run)
    assert len(saved) >= 3
    result = run_cli("verify", "--trusted-key", str(key) + ".pub", "--require-signature",
                     *[str(e.path) for e in saved], cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    forged = newest(run)
    _forge_tensor(forged.path, tmp_path / "forged.pth")
    os.replace(tmp_path / "forged.pth", forged.path)
    code, out = finish(torchrun(2, "--run-dir", str(run), "--epochs", "2", "--trusted-key", str(key) + ".pub",
                                "--sign-key", str(key), *TASK))
    assert code == 0, out
    assert f"skipping checkpoint {forged.path.name}" in out and "does not match" in out, out
    resumed = [m for m in metrics(run) if m["kind"] == "resume"]
    assert resumed and resumed[-1]["step"] < forged.info.manifest["step"], resumed
