"""MLflow tracking for a CheckpointManager run: one MLflow run per reprotrain run, across every resume.

The MLflow run id is stored in each checkpoint's manifest (``integrations.mlflow.run_id``); a resumed
process continues that MLflow run instead of starting a new one. Callbacks the training loop calls:
``start()`` after resume, ``log_metrics(step, metrics)`` per step or epoch, ``end(reason)`` at stop.
Credentials for remote tracking servers come from MLflow's own environment variables; nothing here logs them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from reprotrain.errors import ReprotrainError

_END_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "preempted": "KILLED", "error": "FAILED"}


class MLflowTracker:
    def __init__(self, manager, *, tracking_uri: str | None = None, experiment: str = "reprotrain",
                 lockfile: str | os.PathLike | None = None, artifact_location: str | None = None):
        try:
            import mlflow
        except ImportError:
            raise ReprotrainError("MLflow tracking needs the mlflow package (pip install 'reprotrain[mlflow]')",
                                  path="mlflow") from None
        self._mlflow = mlflow
        self.manager = manager
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.lockfile = Path(lockfile) if lockfile else None
        self.artifact_location = artifact_location  # for a new experiment; None: the tracking server's default
        self.run_id: str | None = None

    def start(self) -> str:
        """Continue the run named by the resumed checkpoint, or create one; tag this lineage segment."""
        recorded = (self.manager.integrations.get("mlflow") or {}).get("run_id")
        if recorded:
            self.run_id = recorded
            self.client.update_run(recorded, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location)
            run = self.client.create_run(experiment_id, tags={"reprotrain.run_id": self.manager.run_id},
                                         run_name=self.manager.run_id)
            self.run_id = run.info.run_id
            for key, value in sorted(self.manager.config.items()):
                self.client.log_param(self.run_id, key, json.dumps(value) if not isinstance(value, str) else value)
        self.manager.integrations["mlflow"] = {"run_id": self.run_id}
        segment = self.manager._segment
        self.client.set_tag(self.run_id, f"reprotrain.segment.{segment['segment']}",
                            json.dumps({k: segment[k] for k in ("first_step", "fingerprint_digest", "host",
                                                                 "resumed_from", "started")}))
        self.client.set_tag(self.run_id, "reprotrain.segments", str(segment["segment"] + 1))
        with tempfile.TemporaryDirectory(prefix="reprotrain-mlflow-") as tmp:
            fingerprint = Path(tmp) / f"fingerprint-{self.manager.fingerprint_digest.replace(':', '-')[:23]}.json"
            fingerprint.write_text(json.dumps(self.manager.fingerprint, indent=2, sort_keys=True))
            self.client.log_artifact(self.run_id, str(fingerprint), artifact_path="reprotrain")
            if self.lockfile is not None and self.lockfile.is_file():
                self.client.log_artifact(self.run_id, str(self.lockfile), artifact_path="reprotrain")
        return self.run_id

    def log_metrics(self, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.client.log_metric(self.run_id, key, float(value), step=int(step))

    def end(self, reason: str = "completed") -> None:
        segment = self.manager._segment["segment"]
        self.client.set_tag(self.run_id, f"reprotrain.segment.{segment}.end", reason)
        self.client.set_terminated(self.run_id, status=_END_STATUS.get(reason, "KILLED"))


class TrackedMetricsLog:
    """A metrics.jsonl writer that also sends its events to MLflow: one place where a loop reports metrics.

    `step` and `epoch` lines become MLflow metrics at that step; `interrupted`, `error` and `end` lines close
    the lineage segment's tag and set the run's status.
    """

    _SIGNAL_REASON = {"SIGINT": "interrupted", "SIGTERM": "preempted"}

    def __init__(self, inner, tracker: MLflowTracker):
        self.inner, self.tracker = inner, tracker
        self._ended = False

    def write(self, kind: str, **fields) -> None:
        self.inner.write(kind, **fields)
        if kind in ("step", "epoch"):
            values = {k: v for k, v in fields.items() if k not in ("epoch", "batch", "step")}
            if kind == "epoch":
                values["epoch"] = fields.get("epoch")
            self.tracker.log_metrics(fields["step"], values)
        elif kind in ("interrupted", "error", "end") and not self._ended:
            self._ended = True
            reason = {"interrupted": self._SIGNAL_REASON.get(fields.get("signal"), "interrupted"),
                      "error": "error"}.get(kind, fields.get("status", "completed"))
            self.tracker.end("completed" if reason == "already-complete" else reason)

    def close(self) -> None:
        self.inner.close()
