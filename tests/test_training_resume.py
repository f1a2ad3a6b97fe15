"""`reprotrain train` resume rules: fingerprint gate, config changes, fresh/required resume, tasks, the default."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, run_cli

EXAMPLES = PROJECT_ROOT / "examples"
ONE_EPOCH = ["--task", "user_task:make_task", "--epochs", "1", "--lr", "0.02", "--quiet"]
ENV = {"PYTHONPATH": str(EXAMPLES)}


def _train(run_dir, *args, cublas=":4096:8"):
    return run_cli("train", "--run-dir", str(run_dir), *args, env={**ENV, "CUBLAS_WORKSPACE_CONFIG": cublas},
                   timeout=240)


def _manifests(run_dir: Path) -> list[dict]:
    from reprotrain.checkpoint import list_checkpoints

    return [e.info.manifest for e in list_checkpoints(run_dir) if e.valid]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A finished one-epoch run of the example user task, recorded with CUBLAS_WORKSPACE_CONFIG=:4096:8."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    result = _train(run_dir, *ONE_EPOCH, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "completed" and doc["epochs_completed"] == 1 and doc["checkpoints_written"] >= 1
    return run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_fingerprint_refused_by_policy_entry(one_epoch_run, tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text("determinism.cublas_workspace_config: refuse\n")
    result = _train(run_dir, *ONE_EPOCH, "--epochs", "2", "--policy", str(policy), cublas=":16:8")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "refused" in result.stderr and "cublas_workspace_config" in result.stderr
    assert ":4096:8" in result.stderr and ":16:8" in result.stderr  # the difference table
    assert "to allow it: --on-env-mismatch warn, or a policy file" in result.stderr  # train's flag, not verify's
    assert "--on-mismatch" not in result.stderr
    assert max(m["step"] for m in _manifests(run_dir)) == max(m["step"] for m in _manifests(one_epoch_run))


def test_fingerprint_refused_with_on_env_mismatch_refuse(one_epoch_run, tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path)
    result = _train(run_dir, *ONE_EPOCH, "--epochs", "2", "--on-env-mismatch", "refuse", cublas=":16:8")
    assert result.returncode == 1 and "cublas_workspace_config" in result.stderr, result.stderr


def test_fingerprint_warned_resume_continues_in_a_new_lineage_segment(one_epoch_run, tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path)
    result = _train(run_dir, *ONE_EPOCH, "--epochs", "2", "--lr", "0.05", cublas=":16:8")
    assert result.returncode == 0, result.stderr
    assert "environment differs" in result.stderr and "cublas_workspace_config" in result.stderr
    assert "config changed on resume: epochs: 1 -> 2" in result.stderr
    assert "config changed on resume: lr: 0.02 -> 0.05" in result.stderr
    final = _manifests(run_dir)[-1]
    assert final["epoch"] == 2 and final["config"]["lr"] == 0.05
    first, second = final["lineage"]
    assert first["fingerprint_digest"] != second["fingerprint_digest"] and len(final["environments"]) == 2


def test_fingerprint_ignored(one_epoch_run, tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path)
    result = _train(run_dir, *ONE_EPOCH, "--epochs", "2", "--on-env-mismatch", "ignore", "--json", cublas=":16:8")
    assert result.returncode == 0, result.stderr
    assert "cublas_workspace_config" in result.stderr  # reported as information, never refused
    doc = json.loads(result.stdout)
    assert doc["epochs_completed"] == 2 and doc["resumes"] == 1
    assert doc["metrics"]["val_accuracy"] > 0.9  # the example task learns


def test_shape_or_data_config_change_refused_and_nothing_written(one_epoch_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from reprotrain.cli import main

    monkeypatch.syspath_prepend(str(EXAMPLES))
    run_dir = _copy(one_epoch_run, tmp_path)
    before = sorted(p.name for p in run_dir.iterdir())
    same_task = ["--task", "user_task:make_task"]  # the task is never taken from a checkpoint: given each time
    for args, field in (([*same_task, "--batch-size", "7"], "batch_size: 32 -> 7"),
                        ([*same_task, "--seed", "3"], "seed: 0 -> 3"),
                        (["--task", "digits"], "task: 'user_task:make_task' -> 'digits'")):
        result = CliRunner().invoke(main, ["train", "--run-dir", str(run_dir), *args])
        assert result.exit_code == 1, result.output
        # One line naming the checkpoint, the field with its old and new values, and the way out; no traceback
        # (Click's runner reports the CLI's exit as a SystemExit, anything else would be a crash).
        assert isinstance(result.exception, SystemExit), result.exception
        [line] = result.output.splitlines()
        newest = max(p.name for p in run_dir.glob("step*.pth"))  # the checkpoint resume picked
        assert line.startswith(f"reprotrain: error: {run_dir / newest}: config change refused on resume ("), line
        assert f"({field}): " in line and "--fresh" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_fresh_refuses_to_clobber_and_resume_requires_a_checkpoint(one_epoch_run, tmp_path):
    from click.testing import CliRunner

    from reprotrain.cli import main

    run_dir = _copy(one_epoch_run, tmp_path)
    result = CliRunner().invoke(main, ["train", "--run-dir", str(run_dir), "--fresh"])
    assert result.exit_code == 1 and "--overwrite" in result.output
    empty = tmp_path / "empty"
    result = CliRunner().invoke(main, ["train", "--run-dir", str(empty), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.output
    result = CliRunner().invoke(main, ["train", "--run-dir", str(empty), "--resume", str(tmp_path / "nope.pth")])
    assert result.exit_code == 2 and "nope.pth" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    result = CliRunner().invoke(main, ["train", "--run-dir", str(empty), "--config", str(bad)])
    assert result.exit_code == 2 and result.output.startswith(f"reprotrain: error: {bad}: unknown option 'epochz'")


def test_resume_path_resumes_that_file(one_epoch_run, tmp_path):
    run_dir = _copy(one_epoch_run, tmp_path)
    from reprotrain.checkpoint import list_checkpoints

    path = [e.path for e in list_checkpoints(run_dir) if e.valid][-1]
    # Code locations never come from the checkpoint: the task is given again, as when the run started.
    result = _train(tmp_path / "other", "--resume", str(path), "--task", "user_task:make_task", "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert f"resuming from {path}" in result.stderr
    assert json.loads(result.stdout)["status"] == "already-complete"  # the recorded config (1 epoch) is the base


def test_default_task_needs_nothing_and_reaches_95_percent(tmp_path):
    result = run_cli("train", "--json", cwd=tmp_path, timeout=280)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["config"]["task"] == "digits" and doc["status"] == "completed"
    assert doc["metrics"]["val_accuracy"] >= 0.95, doc["metrics"]
    assert os.path.isdir(tmp_path / "runs" / "default") and "run the same command again to resume" in result.stderr
    lines = [json.loads(line) for line in (tmp_path / "runs" / "default" / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if line["kind"] == "epoch"]
    assert len(epochs) == doc["config"]["epochs"] and epochs[-1]["val_accuracy"] == doc["metrics"]["val_accuracy"]
