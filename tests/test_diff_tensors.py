"""`reprotrain diff` says whether two checkpoints hold the same weights: model tensors, and model and optimizer
tensors together, compared bit for bit; exit 6 when they differ (documented in README, architecture, ci)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from reprotrain.audit.diff import diff_paths
from reprotrain.checkpoint import CheckpointManager
from reprotrain.cli import main


def train(run_dir, *, steps=3, lr=0.1, nan=False):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    if nan:
        with torch.no_grad():
            model.bias[0] = float("nan")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mgr = CheckpointManager(run_dir, model, optimizer, save_policy="never", log=lambda m: None)
    x = torch.randn(16, 4)
    for step in range(1, steps + 1):
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for group in optimizer.param_groups:
        group["lr"] = lr
    path = mgr.save("latest", epoch=0, step=steps, samples_seen=16 * steps)
    mgr.close()
    return path


def diff(*args):
    return CliRunner().invoke(main, ["diff", *map(str, args)])


def test_two_bit_identical_runs_are_identical_though_their_lineage_differs(tmp_path):
    a, b = train(tmp_path / "a"), train(tmp_path / "b")
    out = diff(a, b)
    assert out.exit_code == 0, out.output
    assert "tensors, model: identical (2 tensors)" in out.output
    assert "tensors, model+optimizer: identical (4 tensors)" in out.output  # weights and momentum buffers
    assert "different runs" in out.output
    # Manifests only (no torch): the old answer, lineage differs -> 1.
    assert diff("--no-tensors", a, b).exit_code == 1


def test_different_weights_exit_6_and_name_the_tensors(tmp_path):
    a, b = train(tmp_path / "a"), train(tmp_path / "b", steps=4)
    out = diff(a, b)
    assert out.exit_code == 6, out.output
    assert "tensors, model: DIFFER (2 differing)" in out.output
    assert "differs: model.weight" in out.output and "differs: model.bias" in out.output
    result = json.loads(diff("--json", a, b).output)
    assert not result["tensors"]["model"]["identical"]
    assert result["tensors"]["model"]["differing_names"] == ["model.bias", "model.weight"]


def test_same_model_other_optimizer_state_is_model_identical_but_exit_6(tmp_path):
    a, b = train(tmp_path / "a"), train(tmp_path / "b", lr=0.5)
    result = diff_paths(a, b)
    assert result["tensors"]["model"]["identical"]
    assert not result["tensors"]["model_and_optimizer"]["identical"]
    assert result["tensors"]["optimizer"]["differing_names"] == ["optimizer.param_groups.0.lr"]
    assert diff(a, b).exit_code == 6


def test_nan_weights_compare_by_their_bits(tmp_path):
    a, b = train(tmp_path / "a", nan=True, steps=0), train(tmp_path / "b", nan=True, steps=0)
    assert diff_paths(a, b)["tensors"]["model"]["identical"]  # torch.equal would call NaN != NaN
    assert diff(a, b).exit_code == 0
