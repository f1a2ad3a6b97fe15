"""The one benchmark command runs every benchmark at CI size without crashing (figures are reported, not
asserted here: speed targets live in benchmarks/, see docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys

from conftest import PROJECT_ROOT


def test_every_benchmark_runs_at_quick_size_and_prints_one_table():
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "bench_checkpoint", "bench_peers",
                             "bench_fingerprint", "bench_verify", "bench_lock", "bench_env", "bench_train", "bench_create"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["figure", "value"]
    for prefix in ("checkpoint:", "peers:", "fingerprint:", "verify:", "lock:", "env:", "train:", "create:"):
        rows = [line for line in lines if line.startswith(prefix)]
        assert rows, f"no {prefix} rows in:\n{result.stdout}"
    assert not any("crashed" in line for line in lines), result.stdout
