"""Gloo workers idle before the interpreter ends (reprotrain.checkpoint.process_exit; docs/distributed.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reprotrain.checkpoint import process_exit

PROJECT_ROOT = Path(__file__).resolve().parents[1]
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task") or process_exit._FUTEX is None,
                                reason="reads /proc/self/task/*/syscall (Linux x86_64 or aarch64)")


def _thread_in(target) -> tuple[threading.Thread, int]:
    ready, box = threading.Event(), {}

    def run():
        box["tid"] = threading.get_native_id()
        ready.set()
        target()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait()
    time.sleep(0.2)  # let it reach its wait
    return thread, box["tid"]


@needs_proc
def test_a_thread_waiting_without_timeout_is_idle_and_a_busy_or_timed_one_is_not():
    lock = threading.Lock()
    lock.acquire()
    _, waiting = _thread_in(lock.acquire)  # untimed futex wait: what an idle gloo worker does
    stop = threading.Event()
    _, timed = _thread_in(lambda: stop.wait(30))  # a timed wait may wake and run: not idle
    spinning_stop = []

    def spin():
        while not spinning_stop:
            sum(range(1000))
    _, spinning = _thread_in(spin)
    try:
        assert process_exit.is_idle(waiting)
        assert not process_exit.is_idle(timed)
        assert not process_exit.is_idle(spinning)
    finally:
        lock.release()
        stop.set()
        spinning_stop.append(True)


@needs_proc
def test_gloo_workers_are_seen_busy_in_a_collective_and_idle_after_it_even_when_ddp_keeps_them():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "0", "--monitor-interval", "0.2", str(PROJECT_ROOT / "tests/scripts/gloo_exit.py")]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1], proc.stdout
    for report in reports:
        assert report["workers"] >= 1, report
        if report["rank"] == 0:
            assert report["busy_while_waiting"] is True, report
        assert report["after_collective"] is True, report
        assert report["ddp_workers_after_destroy"] >= 1, report  # why destroy_process_group alone is not enough
        assert report["ddp_quiesced"] is True, report
