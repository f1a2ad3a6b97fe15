"""Save-policy overhead of the bundled training loop on the default task.

Runs the default `digits` task in-process with the default save policy and with saving disabled (`never`),
alternating, several times each; reports medians and the ratio. Target: the default policy adds <= 3 %.

    python benchmarks/bench_train.py [--repeats N] [--epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

DEFAULT_REPEATS = 5


def _one_run(options: dict, epochs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one fresh run."""
    from reprotrain.training import train

    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        train(f"{tmp}/run", options={**options, "epochs": epochs}, fresh=True, quiet=True, log=lambda _: None)
        return time.perf_counter() - wall, time.process_time() - cpu


def run(repeats: int = DEFAULT_REPEATS, epochs: int | None = None) -> list[tuple]:
    """Rows of (figure, value, target, baseline, ratio)."""
    from reprotrain.training import TrainConfig

    default = TrainConfig()
    epochs = epochs or default.epochs
    # Saving disabled: no policy saves and no `best` saves (those happen at any new best whatever the policy).
    variants = {"disabled": {"save": "never", "keep_best": 0}, "default": {}}
    _one_run(variants["disabled"], 1)  # warm-up: imports, dataset load, allocator
    timings = {name: [] for name in variants}
    for _ in range(repeats):
        for name, options in variants.items():  # alternate so that drift on a shared machine hits both alike
            timings[name].append(_one_run(options, epochs))
    rows = []
    for index, unit in ((0, "wall"), (1, "CPU")):
        baseline = statistics.median(t[index] for t in timings["disabled"])
        saving = statistics.median(t[index] for t in timings["default"])
        rows += [
            (f"digits {epochs} epochs, saving disabled ({unit} s, median of {repeats})", round(baseline, 3),
             "", "", ""),
            (f"digits {epochs} epochs, default save {default.save} ({unit} s, median of {repeats})",
             round(saving, 3), "<= 1.03x" if unit == "wall" else "", round(baseline, 3),
             round(saving / baseline, 4)),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    rows = run(args.repeats, args.epochs)
    header = ("figure", "value", "target", "baseline", "ratio")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    main()
