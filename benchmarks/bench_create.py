"""Peak memory of `env create` against archive size: streaming keeps it flat.

    python benchmarks/bench_create.py [--sizes 32 256]

Builds, for each SIZE (MiB), a local channel whose one package holds SIZE MiB of incompressible data, locks
it, then runs `create_environment()` (py-rattler path) in a fresh process and reads that process's peak RSS
(VmHWM; `ru_maxrss` where /proc is absent). Baseline: the same process importing the same modules and reading the lock, without
installing. Reading every archive whole into memory (the previous implementation) made the peak grow by
at least the archive size; streaming in 1 MiB blocks keeps the growth flat. Target: the largest archive's
peak within 1.25x of the smallest's.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = """
import json, resource, sys
from pathlib import Path
from reprotrain.envlock.verify import locked_entries
lock, prefix, install = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if install:
    from reprotrain.envlock.create import create_environment
    report = create_environment(lock, prefix, platform="linux-64", use_conda=False)
    assert report.verify.matches
else:
    import rattler
    locked_entries(lock, "linux-64")
# VmHWM is this program's own peak (ru_maxrss keeps the parent's high-water mark across fork+exec on Linux)
try:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"maxrss_kib": peak}))
"""


def _peak_mib(lockfile: Path, prefix: Path, install: bool) -> float:
    result = subprocess.run([sys.executable, "-c", CHILD, str(lockfile), str(prefix), "1" if install else "0"],
                            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(result.stdout.splitlines()[-1])["maxrss_kib"] / 1024


def _measure(sizes: list[int]) -> list[tuple[int, float, float, int]]:
    from local_channel import PackageSpec, build_channel, write_environment_file

    from reprotrain.envlock.solve import lock

    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-create-") as scratch:
            work = Path(scratch)
            rng = random.Random(size)
            payload = base64.b64encode(rng.randbytes(size * 1024 * 1024 * 3 // 4)).decode()
            spec = PackageSpec("bigdata", "1.0.0", "h0_0", "linux-64", files={"share/bigdata/blob.txt": payload})
            del payload
            channel = build_channel(work / "channel", [spec])
            archive_bytes = channel.packages[0].path.stat().st_size
            env = write_environment_file(work / "environment.yml", channel, ["bigdata"])
            lock([env], platforms=["linux-64"], lockfile=work / "conda-lock.yml", solver="rattler")
            base = _peak_mib(work / "conda-lock.yml", work / "unused", install=False)
            peak = _peak_mib(work / "conda-lock.yml", work / "env", install=True)
            rows.append((size, base, peak, archive_bytes))
    return rows


def run(quick: bool = False) -> list[tuple[str, str, str, str, str]]:
    """Rows of (figure, value, target, baseline, ratio) for benchmarks/run.py."""
    rows = _measure([8, 32] if quick else [32, 256])
    smallest = rows[0][2]
    out = []
    for size, base, peak, archive_bytes in rows:
        target = "<= 1.25x" if size == rows[-1][0] else "-"
        out.append((f"env create peak RSS, {archive_bytes / 2**20:.0f} MiB archive", f"{peak:.0f} MiB", target,
                    f"{smallest:.0f} MiB (smallest archive); {base:.0f} MiB without installing",
                    f"{peak / smallest:.2f}x"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256], help="archive payloads in MiB")
    args = parser.parse_args()
    rows = _measure(args.sizes)
    print(f"{'payload MiB':>11} {'archive MiB':>11} {'no-install peak MiB':>20} {'create peak MiB':>16} {'x smallest':>10}")
    for size, base, peak, archive_bytes in rows:
        print(f"{size:>11} {archive_bytes / 2**20:>11.1f} {base:>20.0f} {peak:>16.0f} {peak / rows[0][2]:>10.2f}")
    ok = rows[-1][2] <= 1.25 * rows[0][2]
    print(f"target: peak independent of archive size (largest <= 1.25x smallest): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
