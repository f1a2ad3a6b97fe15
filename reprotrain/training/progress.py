"""What the user sees while training: a progress bar on a terminal and metrics.jsonl in the run directory."""

from __future__ import annotations

import json
import math
import os
import sys
import time


class MetricsLog:
    """Append-only JSON lines; each line is flushed at once so a crash loses nothing already written.

    A resumed run appends a `resume` line; step lines after the resumed step are the ones that count.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, kind: str, **fields) -> None:
        record = {"kind": kind, "time": round(time.time(), 3)}
        record.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()})
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class Progress:
    """A rich progress bar (epoch, step, loss, samples/s, ETA) on stderr; silent when not a terminal or quiet."""

    def __init__(self, *, enabled: bool, total_steps: int, start_step: int):
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
            TimeRemainingColumn

        self._bar = RichProgress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.0f} samples/s"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._task = self._bar.add_task("train", total=total_steps, completed=start_step, epoch=0,
                                        loss=float("nan"), rate=0.0)
        self._bar.start()

    def update(self, *, step: int, epoch: int, loss: float, samples_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, epoch=epoch + 1, loss=loss, rate=samples_per_s)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
