"""Benchmark the environment fingerprint (targets from the fingerprint issue).

    python benchmarks/bench_fingerprint.py [--runs 7]

Rows (median of RUNS, each figure measured in this same run as its baseline):
  collect() in-process, torch imported         target <= 50 ms; baseline torch.utils.collect_env.get_env_info()
  collect() with a 300-package conda prefix     target <= 50 ms; the prefix is installed by py-rattler from a
                                                local channel (tests/local_channel.py); baseline the same
                                                collect() without a conda prefix
  conda-meta read, 300 records                  baseline json.loads of every record (a full parse)
  `reprotrain fingerprint --json` process       target <= 0.25x; baseline `python -m torch.utils.collect_env`
  `reprotrain --help` process                   no torch import; baseline `python -c pass`
  torch modules imported by `reprotrain --help` and `reprotrain fingerprint --json` (from -X importtime): 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import median_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]



def _process(*args: str, env: dict | None = None):
    def run():
        subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=ROOT, env=env)
    return run


@contextlib.contextmanager
def _conda_prefix(path: str | None):
    old = os.environ.get("CONDA_PREFIX")
    if path is None:
        os.environ.pop("CONDA_PREFIX", None)
    else:
        os.environ["CONDA_PREFIX"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CONDA_PREFIX", None)
        else:
            os.environ["CONDA_PREFIX"] = old


def _large_prefix(workdir: Path, count: int = 300) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from local_channel import build_large_channel
    finally:
        sys.path.remove(str(ROOT / "tests"))
    channel = build_large_channel(workdir / "channel", count=count)
    prefix = workdir / "env"
    channel.install(["bench-all"], prefix)
    return prefix


def run(runs: int = 7) -> list[tuple[str, float, str, float, float]]:
    """Rows of (figure, value, target, baseline, ratio); times in milliseconds."""
    import torch  # noqa: F401  (the in-process figures are for a training process, where torch is imported)
    from torch.utils import collect_env

    from reprotrain import fingerprint as fp
    from reprotrain.fingerprint import packages as pk

    rows = []
    env = {k: v for k, v in os.environ.items() if k != "CONDA_PREFIX"}
    with _conda_prefix(None):
        fp.collect()  # first call pays the one-time imports (jsonschema, schema load)
        plain = median_seconds(fp.collect, runs)
        baseline = median_seconds(collect_env.get_env_info, max(3, runs // 2))
    rows.append(("collect() in-process, torch imported (ms)", plain * 1e3, "<= 50", baseline * 1e3,
                 plain / baseline))

    with tempfile.TemporaryDirectory(prefix="bench-fingerprint-") as tmp:
        prefix = _large_prefix(Path(tmp))
        with _conda_prefix(str(prefix)):
            doc = fp.collect()
            assert doc["packages"]["conda"]["count"] == 301, doc["packages"]["conda"]
            with_conda = median_seconds(fp.collect, runs)
        rows.append(("collect() with a 301-package conda prefix (ms)", with_conda * 1e3, "<= 50", plain * 1e3,
                     with_conda / plain))
        records = sorted((prefix / "conda-meta").glob("*.json"))
        fast = median_seconds(lambda: pk.conda_packages(str(prefix)), runs)
        full = median_seconds(lambda: [json.loads(p.read_bytes()) for p in records], runs)
        rows.append(("conda-meta read, 301 records (ms)", fast * 1e3, "-", full * 1e3, fast / full))

    cli = median_seconds(_process("-m", "reprotrain", "fingerprint", "--json", env=env), runs)
    torch_env = median_seconds(_process("-m", "torch.utils.collect_env", env=env), max(3, runs // 2))
    rows.append(("`reprotrain fingerprint --json` process (ms)", cli * 1e3, "<= 0.25x", torch_env * 1e3,
                 cli / torch_env))
    help_time = median_seconds(_process("-m", "reprotrain", "--help", env=env), runs)
    bare = median_seconds(_process("-c", "pass", env=env), runs)
    rows.append(("`reprotrain --help` process (ms)", help_time * 1e3, "no torch import", bare * 1e3,
                 help_time / bare))
    for args in (["--help"], ["fingerprint", "--json"]):
        count = _torch_modules_imported(args, env)
        rows.append((f"torch modules imported by `reprotrain {' '.join(args)}`", count, "0", 0.0, 0.0))
    return rows


def _torch_modules_imported(args: list[str], env: dict) -> int:
    """How many torch modules a real `reprotrain ARGS` process imports (from `-X importtime`)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "reprotrain", *args], capture_output=True,
                         text=True, check=True, cwd=ROOT, env=env)
    modules = [line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2]
    assert "click" in modules, "the -X importtime probe saw no imports"
    return sum(1 for m in modules if m == "torch" or m.startswith("torch."))


def format_table(rows) -> str:
    header = ("figure", "median", "target", "baseline", "ratio")
    body = [(f, f"{v:.1f}", t, f"{b:.1f}", f"{r:.3f}x") if isinstance(v, float) else (f, str(v), t, "-", "-")
            for f, v, t, b, r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *body])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    arguments = parser.parse_args()
    print(format_table(run(arguments.runs)))
