"""`reprotrain train --mlflow` interrupted twice by real SIGINTs: one MLflow run, three lineage segments,
and the same story in `reprotrain report`."""

from __future__ import annotations

import json
import os
import signal

import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra (reprotrain[mlflow])")

from conftest import run_cli  # noqa: E402
from test_training_faults import BASE, ENV, _signal_at_step, _start  # noqa: E402


def test_train_interrupted_twice_is_one_mlflow_run_and_one_report(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**ENV, "MLFLOW_TRACKING_URI": uri}
    run_dir = tmp_path / "run"
    args = [*BASE, "--mlflow", "--mlflow-experiment", "twice"]
    # Artifacts go under tmp_path, not the working directory (MLflow's default for a SQLite store).
    mlflow.MlflowClient(tracking_uri=uri).create_experiment("twice", artifact_location=(tmp_path / "art").as_uri())
    for stop_at in (6, 17):
        proc = _start(run_dir, *args, env=env)
        _signal_at_step(proc, run_dir, stop_at, signal.SIGINT)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 130, err
    final = run_cli("train", "--run-dir", str(run_dir), *args, env=env, cwd=tmp_path, timeout=240)
    assert final.returncode == 0, final.stderr

    client = mlflow.MlflowClient(tracking_uri=uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "twice"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["reprotrain.segments"] == "3"
    assert {run.data.tags[f"reprotrain.segment.{i}.end"] for i in range(3)} == {"interrupted", "completed"}
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "loss")})
    total = max(steps)
    assert steps == list(range(1, total + 1)), "every logged step of every segment is in the one MLflow run"
    assert uri not in json.dumps(run.data.params)  # the tracking URI is never recorded

    report = run_cli("report", str(run_dir), "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    story = json.loads(report.stdout)
    text = json.dumps(story)
    assert text.count('"end_reason": "interrupted"') == 2 and '"end_reason": "completed"' in text
    assert os.fspath(uri) not in text
