"""Weights & Biases tracking in W&B's offline mode, checked by reading the offline run files W&B writes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("wandb", reason="the W&B integration is tested with the real wandb package (offline mode)")

from conftest import run_cli  # noqa: E402
from test_training_faults import BASE, ENV, _signal_at_step, _start  # noqa: E402
from frameworks_util import as_other_environment  # noqa: E402
from wandb_offline import history, offline_runs, run_ids, summaries  # noqa: E402

from reprotrain.checkpoint import list_checkpoints  # noqa: E402

SECRET = "wandb-test-key-not-a-real-one-0123456789"
# This checkout first on the path: the training processes run with cwd elsewhere, and must use this tree's reprotrain.
WANDB_ENV = {**ENV, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), ENV["PYTHONPATH"]]),
             "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": SECRET}


def test_train_interrupted_twice_is_one_wandb_run_holding_every_step(tmp_path):
    run_dir = tmp_path / "run"
    args = [*BASE, "--wandb", "--wandb-project", "twice"]
    for stop_at, sig, code in ((6, signal.SIGINT, 130), (17, signal.SIGTERM, 143)):
        proc = _start(run_dir, *args, env=WANDB_ENV)
        _signal_at_step(proc, run_dir, stop_at, sig)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == code, err
    final = run_cli("train", "--run-dir", str(run_dir), *args, env=WANDB_ENV, cwd=tmp_path, timeout=240)
    assert final.returncode == 0, final.stderr

    newest = [e for e in list_checkpoints(run_dir) if e.valid][-1].info.manifest
    recorded = newest["integrations"]["wandb"]
    assert set(recorded) == {"run_id", "project"} and recorded["project"] == "twice"
    files = offline_runs(run_dir)
    assert len(files) == 3  # one offline file per process, all of them the same W&B run
    assert set().union(*(run_ids(f) for f in files)) == {recorded["run_id"]}

    steps, segments, ends = set(), [], []
    for f in files:
        rows = history(f)
        steps |= {row["reprotrain/step"] for row in rows if "loss" in row}
        segments += [row["reprotrain/segment"] for row in rows if "reprotrain/segment" in row]
        summary = summaries(f)
        ends += [value for key, value in summary.items() if key.endswith(".end")]
    assert steps == set(range(1, newest["step"] + 1)), "every step of every segment is in the W&B run"
    assert segments == [0, 1, 2]
    assert ends == ["interrupted", "preempted", "completed"]
    assert summaries(files[-1])["reprotrain/segment.2"]["resumed_from"] == newest["lineage"][2]["resumed_from"]

    # Credentials stay with W&B: not in any checkpoint, manifest or metrics line.
    for entry in list_checkpoints(run_dir):
        assert SECRET.encode() not in entry.path.read_bytes()
    assert SECRET not in (run_dir / "metrics.jsonl").read_text()
    assert SECRET not in json.dumps(newest)


def test_environment_change_between_segments_is_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from reprotrain.integrations.history import RunHistory
    from reprotrain.integrations.wandb_tracking import WandbTracker

    first = RunHistory(log=lambda m: None, config={"lr": 0.1})
    manifest = as_other_environment(first.manifest("interrupted", step=7, epoch=0, end_reason="preempted"),
                                    "2.13.1")
    manifest["integrations"] = {"wandb": {"run_id": "envchg01", "project": "p"}}

    second = RunHistory(log=lambda m: None)
    second.adopt(manifest, tmp_path / "step0000000007-interrupted.pth")
    tracker = WandbTracker(second, project="p", directory=tmp_path)
    assert tracker.start() == "envchg01"
    tracker.log_metrics(8, {"loss": 0.5})
    tracker.end("completed")
    import wandb

    wandb.teardown()  # the W&B service writes the offline file; it has flushed everything once torn down
    [f] = offline_runs(tmp_path)
    segment = summaries(f)["reprotrain/segment.1"]
    assert any(change.startswith("torch.version: 2.13.1 -> ") for change in segment["environment_changes"])
    rows = history(f)
    assert rows[0]["reprotrain/environment_changed"] == 1 and rows[0]["reprotrain/step"] == 7
    assert {"loss": 0.5, "reprotrain/step": 8}.items() <= rows[1].items()
