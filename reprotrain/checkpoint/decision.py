"""The save decision: at each step_done, is a save due, and of which kind (latest, periodic, best)."""

from __future__ import annotations

import math
import time
from typing import Mapping

from reprotrain.checkpoint.metrics import plain
from reprotrain.checkpoint.policies import RetentionPolicy, SaveClock, SavePolicy, best_value


class SaveDecision:
    """The save policy's clock, the retention's `periodic` rule and the monitored metric's best value."""

    def __init__(self, policy: SavePolicy, retention: RetentionPolicy, *, monitor: str | None, mode: str):
        self.policy, self.retention, self.monitor, self.mode = policy, retention, monitor, mode
        self.clock = SaveClock(policy, last_save_time=time.monotonic())
        self.best: float | None = None

    def monitored_value(self, metrics: Mapping | None) -> float | None:
        if not self.monitor or metrics is None:
            return None
        value = plain(metrics.get(self.monitor))
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def kind_for(self, epoch: int, epoch_end: bool, metrics: Mapping | None) -> str:
        if epoch_end and self.retention.keep_every and epoch % self.retention.keep_every == 0:
            return "periodic"
        value = self.monitored_value(metrics)
        if epoch_end and self.retention.keep_best > 0 and value is not None and (self.best is None or
                                                (value > self.best if self.mode == "max" else value < self.best)):
            return "best"
        return "latest"

    def decide(self, *, epoch: int, step: int, epoch_end: bool, metrics: Mapping | None) -> tuple[str, bool]:
        """(kind, due) for this step_done. A new best is saved at the epoch end that reaches it, whatever the
        frequency policy says."""
        kind = self.kind_for(epoch, epoch_end, metrics)
        due = kind == "best" or self.clock.due(step=step, epoch=epoch, epoch_end=epoch_end, now=time.monotonic())
        return kind, due

    def messages(self) -> list[str]:
        out = list(self.clock.messages)
        self.clock.messages.clear()
        return out

    def saved(self, manifest: dict, *, cost: float) -> None:
        self.clock.saved(now=time.monotonic(), cost=cost)
        if manifest["monitor"] and manifest["monitor"]["value"] is not None and manifest["kind"] != "emergency":
            self.best = best_value([self.best, manifest["monitor"]["value"]], self.mode)

    def adopt_best(self, values) -> None:
        self.best = best_value(values, self.mode)
