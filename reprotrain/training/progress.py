"""What the user sees while training: a progress bar on a terminal and metrics.jsonl in the run directory."""

from __future__ import annotations

import sys

from reprotrain.checkpoint.metrics import MetricsLog  # noqa: F401 (re-exported: the loop writes it)


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
