"""What every benchmark shares: timing by medians and the one table layout (figure, value, target, baseline, ratio)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

HEADER = ("figure", "value", "target", "baseline", "ratio")


def median_seconds(func: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls (this machine is noisy: one call says little)."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def format_rows(rows: Sequence[Sequence[object]], header: Sequence[str] = HEADER) -> str:
    table = [tuple(str(c) for c in header), *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)
