"""Every benchmark and the crash torture, one table: figure, value, target, baseline, ratio, pass.

    python -m benchmarks [--quick | --full] [--only NAME ...] [--markdown]
    python benchmarks/run.py ...

Runs each `benchmarks/bench_*.py` module's `run()` in this process (sizes and run counts scaled down with
`--quick`: the CI-sized run) and `benchmarks/torture.py` in its own process (it forks per trial, which must
not happen in a process where other benchmarks left threads running). Every ratio is against a baseline
measured in the same run of the same benchmark. `pass` compares the value (or the ratio, for targets written
as `Nx`) with the target; `-` where the target is not a number.

Exit code: 1 if a benchmark crashed or a torture figure missed its target (a broken promise, not noise),
else 0: speed targets on a shared machine are reported, not enforced.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# CI-sized arguments, by parameter name, for run() functions that have no `quick` parameter.
QUICK_ARGS = {"runs": 3, "repeats": 2, "mib": 64, "epochs": 1, "packages": 50}
TORTURE_KILLS = {"quick": 30, "full": 1000}
HEADER = ("figure", "value", "target", "baseline", "ratio", "pass")


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def _call_run(module, quick: bool) -> list[tuple]:
    params = inspect.signature(module.run).parameters
    if "quick" in params:
        return module.run(quick=quick)
    kwargs = {name: value for name, value in QUICK_ARGS.items() if name in params} if quick else {}
    return module.run(**kwargs)


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _ratio_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}x" if value else "-"
    return str(value) if value not in ("", None) else "-"


_TARGET = re.compile(r"^(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*(x)?")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def judge(value: str, target: str, ratio: str) -> str:
    """pass / FAIL / - for one row."""
    target = target.strip()
    fraction = re.fullmatch(r"(\d+)/(\d+)", value.strip())
    if target in ("100 %", "all") and fraction:
        return "pass" if fraction.group(1) == fraction.group(2) else "FAIL"
    if target == "0":
        number = _NUMBER.match(value.strip())
        return "-" if number is None else ("pass" if float(number.group()) == 0 else "FAIL")
    match = _TARGET.match(target)
    if not match:
        return "-"
    op, bound, is_ratio = match.group(1), float(match.group(2)), match.group(3)
    number = _NUMBER.match((ratio if is_ratio else value).strip())
    if number is None:
        return "-"
    x = float(number.group())
    ok = {"<=": x <= bound, ">=": x >= bound, "<": x < bound, ">": x > bound}[op]
    return "pass" if ok else "FAIL"


def _row(name: str, row: tuple) -> tuple:
    figure, value, target, baseline, ratio = (tuple(row) + ("", "", "", ""))[:5]
    value, target, baseline, ratio = _text(value), str(target or "-"), _text(baseline) or "-", _ratio_text(ratio)
    if baseline in ("", "0.000"):
        baseline = "-"
    return (f"{name}: {figure}", value, target, baseline, ratio, judge(value, target, ratio))


def run_benchmark(name: str, quick: bool) -> list[tuple]:
    started = time.monotonic()
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        rows = [_row(name.removeprefix("bench_"), r) for r in _call_run(module, quick)]
    except Exception as exc:  # one broken benchmark must not hide the others' figures
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        rows = [(f"{name}: crashed", detail[:120], "-", "-", "-", "FAIL")]
    print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def run_torture(kills: int) -> list[tuple]:
    from benchmarks import torture

    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(HERE / "torture.py"), "--kills", str(kills), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    print(f"torture: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [("torture: crashed", tail[:120], "-", "-", "-", "FAIL")]
    fields = {k: v for k, v in doc.items() if k in torture.Report.__dataclass_fields__}
    report = torture.Report(**fields)
    return [(figure, value, target, baseline, ratio, judge(value, target, ratio))
            for figure, value, target, baseline, ratio in torture.rows(report, kills)]


def format_table(rows: list[tuple], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [HEADER, *rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized: small states, 3 runs, 30 kills")
    size.add_argument("--full", action="store_true", help="the published sizes (default): 1000 kills")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help="only these (bench_* module names or `torture`)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    names = discover() + ["torture"]
    if args.only is not None:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    started = time.monotonic()
    rows = []
    for name in names:
        rows += run_torture(TORTURE_KILLS[mode]) if name == "torture" else run_benchmark(name, args.quick)
    print(format_table(rows, args.markdown))
    print(f"\n{mode} run, {time.monotonic() - started:.0f} s, medians of several runs; every ratio is against a "
          "baseline measured in the same run", file=sys.stderr)
    broken = [r for r in rows if r[5] == "FAIL" and (r[0].startswith("torture") or r[0].endswith("crashed"))]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
