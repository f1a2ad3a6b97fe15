"""Speed of the lock commands: `reprotrain lock --check` and `reprotrain lock --help`.

    python benchmarks/bench_lock.py [--runs 5]

Builds the tests' local channel (offline), locks it for three platforms, then times, as real
subprocesses (what a user or CI sees, interpreter start included) and in-process:

  lock --check (CLI)        target <= 0.5 s (a fresh lock: conda-lock is not imported, see content_hash.py)
  check() in-process        the work itself, without interpreter start and imports
  lock --help (CLI)         must never import torch (verified with -X importtime)
  baseline: re-solve (CLI)  what a check costs when it has to solve (`reprotrain lock`, py-rattler, three platforms)
  baseline: python -c pass  interpreter start alone
  import conda_lock alone   the floor under every command that hashes a specification

Prints medians of RUNS runs and each row's ratio to the re-solve baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import median_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))



def _cli(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "reprotrain", *args], cwd=cwd, check=True, capture_output=True)


def _measure(runs: int) -> list[tuple[str, float, str]]:
    from local_channel import build_channel, write_environment_file
    from reprotrain.envlock.solve import lock
    from reprotrain.envlock.staleness import check

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        channel = build_channel(work / "channel")
        env = write_environment_file(work / "environment.yml", channel, ["python 3.11.*", "pytorch", "click"])
        lock([env], lockfile=work / "conda-lock.yml", solver="rattler")

        probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "reprotrain", "lock", "--help"],
                               capture_output=True, text=True, check=True)
        modules = {line.split("|")[-1].strip() for line in probe.stderr.splitlines() if line.startswith("import time:")}
        torch_imported = any(m == "torch" or m.startswith("torch.") for m in modules)

        check(work / "conda-lock.yml")  # warm the in-process imports once
        rows = [
            ("lock --check (CLI)", median_seconds(lambda: _cli("lock", "--check", cwd=work), runs), "<= 0.5 s"),
            ("check() in-process", median_seconds(lambda: check(work / "conda-lock.yml"), runs), ""),
            ("lock --help (CLI)", median_seconds(lambda: _cli("lock", "--help", cwd=work), runs),
             "torch imported: " + ("YES (FAIL)" if torch_imported else "no")),
            ("baseline: re-solve (CLI)", median_seconds(
                lambda: _cli("lock", "--solver", "rattler", "--lockfile", "resolved.yml", cwd=work), runs), ""),
            ("baseline: python -c pass", median_seconds(
                lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), runs), ""),
            ("import conda_lock alone", median_seconds(lambda: subprocess.run(
                [sys.executable, "-c", "import conda_lock.content_hash, conda_lock.src_parser"], check=True), runs),
             "conda-lock's package imports its whole CLI (no longer on the --check path)"),
        ]
    return rows


def run(runs: int = 5) -> list[tuple[str, str, str, str, str]]:
    """Rows of (figure, value, target, baseline, ratio) for benchmarks/run.py."""
    rows = _measure(runs)
    baseline = rows[3][1]
    return [(name, f"{seconds:.3f} s", note, f"{baseline:.3f} s (re-solve)", f"{seconds / baseline:.2f}x")
            for name, seconds, note in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    rows = _measure(runs)
    baseline = rows[3][1]
    print(f"{'case':<28}{'median s':>10}{'x re-solve':>12}  note   ({runs} runs each)")
    for name, seconds, note in rows:
        print(f"{name:<28}{seconds:>10.3f}{seconds / baseline:>12.2f}  {note}")


if __name__ == "__main__":
    main()
