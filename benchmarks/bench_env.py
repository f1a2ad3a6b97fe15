"""Benchmark `env verify` on a real 300-package prefix (targets: verify_environment() <= 0.5 s and the whole
`reprotrain env verify` process <= 0.3 s, without --deep).

    python benchmarks/bench_env.py [--packages 300] [--runs 7]

Builds a local channel of N packages (tests/local_channel.py), locks it with `reprotrain lock`'s
py-rattler path, installs it with `env create`, then times, each RUNS times (median reported):
  baseline      load_lock() alone: parsing the lock, which verify must do anyway (no conda-lock import)
  verify        verify_environment(), in a warm process
  verify --deep the same, re-hashing every installed file
  CLI baseline  `python -c pass` (interpreter start)
  CLI verify    `python -m reprotrain env verify` end to end, a fresh process each run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from local_channel import build_large_channel, write_environment_file  # noqa: E402

from reprotrain.envlock.create import create_environment  # noqa: E402
from reprotrain.envlock.lockfile import load_lock  # noqa: E402
from reprotrain.envlock.solve import lock  # noqa: E402
from reprotrain.envlock.verify import verify_environment  # noqa: E402
if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import median_seconds  # noqa: E402

TARGET_S = 0.5
CLI_TARGET_S = 0.3



def _measure(args) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory(prefix="bench-env-") as scratch:
        work = Path(scratch)
        channel = build_large_channel(work / "channel", count=args.packages)
        env_file = write_environment_file(work / "environment.yml", channel, ["bench-all"])
        lockfile = work / "conda-lock.yml"
        lock([env_file], platforms=["linux-64"], lockfile=lockfile, solver="rattler")
        prefix = work / "env"
        report = create_environment(lockfile, prefix, platform="linux-64", use_conda=False)
        assert report.verify.matches and report.conda_packages == args.packages + 1, report.to_dict()

        def verify(deep=False):
            result = verify_environment(lockfile, prefix, deep=deep)
            assert result.matches

        cli = [sys.executable, "-m", "reprotrain", "env", "verify", "--lockfile", str(lockfile),
               "--prefix", str(prefix)]
        rows = [
            ("baseline: load_lock", median_seconds(lambda: load_lock(lockfile), args.runs)),
            ("verify_environment", median_seconds(verify, args.runs)),
            ("verify_environment --deep", median_seconds(lambda: verify(deep=True), args.runs)),
            ("CLI baseline: python -c pass",
             median_seconds(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.runs)),
            ("CLI: reprotrain env verify",
             median_seconds(lambda: subprocess.run(cli, check=True, capture_output=True), args.runs)),
        ]
    return rows


def run(packages: int = 300, runs: int = 7) -> list[tuple[str, str, str, str, str]]:
    """Rows of (figure, value, target, baseline, ratio) for benchmarks/run.py."""
    rows = _measure(argparse.Namespace(packages=packages, runs=runs))
    out = []
    for i, (name, seconds) in enumerate(rows):
        base_name, base = rows[0] if i < 3 else rows[3]
        target = {"verify_environment": f"<= {TARGET_S} s",
                  "CLI: reprotrain env verify": f"<= {CLI_TARGET_S} s"}.get(name, "-")
        out.append((f"{name} ({packages + 1} packages)", f"{seconds:.3f} s", target,
                    f"{base:.3f} s ({base_name.removeprefix('baseline: ').removeprefix('CLI baseline: ')})",
                    f"{seconds / base:.2f}x"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rows = _measure(args)
    library_base, cli_base = rows[0][1], rows[3][1]
    print(f"env verify, {args.packages + 1}-package prefix, median of {args.runs} runs")
    print(f"{'what':<32} {'median s':>9} {'x baseline':>11}")
    for i, (name, seconds) in enumerate(rows):
        base = library_base if i < 3 else cli_base
        print(f"{name:<32} {seconds:>9.3f} {seconds / base:>11.2f}")
    ok = rows[1][1] <= TARGET_S and rows[4][1] <= CLI_TARGET_S
    print(f"targets: verify_environment <= {TARGET_S} s, the CLI process <= {CLI_TARGET_S} s: "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
