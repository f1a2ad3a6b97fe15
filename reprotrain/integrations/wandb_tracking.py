"""Weights & Biases tracking: one W&B run per reprotrain run, across every resume (docs/wandb.md).

The W&B run id is stored in each checkpoint's manifest (``integrations.wandb``: run id and project, nothing else);
a resumed process continues that W&B run (``resume="allow"`` with the same id) instead of starting a new one.
Each lineage segment is logged where it starts (``reprotrain/segment``), with the environment differences from
the previous segment when the fingerprint changed. Metrics are logged against ``reprotrain/step`` (the training
step), not W&B's internal step, so a resume from an older checkpoint (a damaged newer one skipped) logs its steps
again instead of having them dropped as out of order.

Works with a CheckpointManager (``reprotrain train --wandb``, your own loop) and with the framework integrations'
RunHistory. Credentials come only from W&B's own environment and files (WANDB_API_KEY, ~/.netrc, ``wandb login``);
nothing here reads, logs or stores them. ``WANDB_MODE=offline`` writes the run under ``<dir>/wandb/`` for a later
``wandb sync``.
"""

from __future__ import annotations

import os
import secrets

from reprotrain import fingerprint as fp
from reprotrain.fingerprint.policy import show_value
from reprotrain.errors import ReprotrainError

STEP_METRIC = "reprotrain/step"
_EXIT_CODES = {"completed": 0, "interrupted": 130, "preempted": 143, "error": 1}


def _segment(source) -> dict:
    segment = getattr(source, "segment", None)
    return segment if isinstance(segment, dict) else source._segment


def _plain_number(value):
    try:
        number = float(value)  # python and numpy numbers, 0-d tensors
    except (TypeError, ValueError):
        return None
    return number


class WandbTracker:
    """Callbacks: ``start()`` after resume, ``log_metrics(step, metrics)``, ``checkpoint(path, kind)``, ``end(reason)``."""

    def __init__(self, source, *, project: str = "reprotrain", entity: str | None = None,
                 directory: str | os.PathLike | None = None, mode: str | None = None, tags: list[str] | None = None):
        try:
            import wandb
        except ImportError:
            raise ReprotrainError("W&B tracking needs the wandb package (pip install 'reprotrain[wandb]')",
                                  path="wandb") from None
        self._wandb = wandb
        self.source = source  # a CheckpointManager or a RunHistory
        self.project, self.entity, self.mode, self.tags = project, entity, mode, tags
        self.directory = os.fspath(directory) if directory is not None else None
        self.run = None
        self.run_id: str | None = None
        self._ended = False

    def start(self) -> str:
        """Continue the W&B run named by the resumed checkpoint, or create one; log where this segment starts."""
        if self.run is not None:
            return self.run_id
        recorded = (self.source.integrations.get("wandb") or {}).get("run_id")
        self.run_id = recorded or secrets.token_hex(4)  # W&B ids: lowercase letters and digits
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
        self.run = self._wandb.init(id=self.run_id, resume="allow", project=self.project, entity=self.entity,
                                    dir=self.directory, mode=self.mode, tags=self.tags,
                                    name=self.source.run_id, config=None if recorded else dict(self.source.config),
                                    settings=self._wandb.Settings(console="off", x_disable_stats=True))
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        self.source.integrations["wandb"] = {"run_id": self.run_id, "project": self.project}
        segment = _segment(self.source)
        number = segment["segment"]
        changes = self._environment_changes()
        self.run.log({STEP_METRIC: segment["first_step"], "reprotrain/segment": number,
                      "reprotrain/environment_changed": int(bool(changes))})
        self.run.summary[f"reprotrain/segment.{number}"] = {
            "first_step": segment["first_step"], "fingerprint_digest": segment["fingerprint_digest"],
            "host": segment["host"], "resumed_from": segment["resumed_from"], "started": segment["started"],
            "environment_changes": changes}
        self.run.summary["reprotrain/segments"] = number + 1
        self.run.summary["reprotrain/run_id"] = self.source.run_id
        return self.run_id

    def _environment_changes(self) -> list[str]:
        """`field: old -> new` for every fingerprint difference from the previous segment's environment."""
        lineage = getattr(self.source, "lineage", [])
        lineage = getattr(lineage, "segments", lineage)  # CheckpointManager: a Lineage; RunHistory: the list itself
        if not lineage:
            return []
        previous = self.source.environments.get(lineage[-1]["fingerprint_digest"])
        if previous is None or lineage[-1]["fingerprint_digest"] == self.source.fingerprint_digest:
            return []
        comparison = fp.compare(previous, self.source.fingerprint, fp.Policy())
        return [f"{d.field}: {show_value(d.recorded)} -> {show_value(d.live)} ({d.severity})"
                for d in comparison.differences]

    def log_metrics(self, step: int, metrics: dict) -> None:
        if self.run is None:
            return
        values = {k: v for k, v in ((str(k), _plain_number(v)) for k, v in metrics.items()) if v is not None}
        if values:
            self.run.log({**values, STEP_METRIC: int(step)})

    def checkpoint(self, path, kind: str) -> None:
        if self.run is not None:
            self.run.summary["reprotrain/last_checkpoint"] = os.path.basename(os.fspath(path).rstrip("/"))
            self.run.summary["reprotrain/last_checkpoint_kind"] = kind

    def end(self, reason: str = "completed") -> None:
        if self.run is None or self._ended:
            return
        self._ended = True
        self.run.summary[f"reprotrain/segment.{_segment(self.source)['segment']}.end"] = reason
        self.run.finish(exit_code=_EXIT_CODES.get(reason, 1))
