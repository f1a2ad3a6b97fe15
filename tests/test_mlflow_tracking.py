"""MLflow tracking against a real local MLflow store (SQLite tracking store, local artifacts)."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra (reprotrain[mlflow])")

from integrations_runs import run_interrupted_twice  # noqa: E402
from reprotrain.checkpoint import store  # noqa: E402
from reprotrain.integrations.mlflow_tracking import MLflowTracker  # noqa: E402


def test_run_interrupted_twice_is_one_mlflow_run_with_three_segments(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    ids = run_interrupted_twice(run_dir, tracker_factory=lambda mgr: MLflowTracker(
        mgr, tracking_uri=uri, artifact_location=(tmp_path / "artifacts").as_uri()))
    assert len(set(ids)) == 1  # resumed processes continued the same MLflow run
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(ids[0])
    assert run.info.status == "FINISHED"
    assert run.data.tags["reprotrain.segments"] == "3"
    assert {f"reprotrain.segment.{i}" for i in range(3)} <= set(run.data.tags)
    losses = client.get_metric_history(ids[0], "loss")
    assert sorted(m.step for m in losses) == list(range(1, 16))
    assert run.data.params["lr"] == "0.1"
    artifacts = [a.path for a in client.list_artifacts(ids[0], "reprotrain")]
    assert any(p.startswith("reprotrain/fingerprint-") for p in artifacts)
    newest = [e for e in store.list_checkpoints(run_dir) if e.valid][-1].info.manifest
    assert newest["integrations"]["mlflow"]["run_id"] == ids[0]
    assert [s["end_reason"] for s in newest["lineage"]] == ["lost", "lost", "completed"]
