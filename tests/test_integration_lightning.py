"""examples/lightning_digits.py with the real Lightning: reprotrain checkpoints through the CheckpointIO plugin, real
SIGINT and SIGTERM, `ckpt_path="last"` resolved to the newest valid checkpoint, bit-identical end, damaged newest
skipped, changed environment refused; hyper-parameters that are not plain refused by key."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("lightning", reason="the Lightning integration is tested with the real lightning package")

import torch  # noqa: E402

from frameworks_util import as_other_environment, flip_byte, interrupt_when, run, start  # noqa: E402
from reprotrain.audit.digest import training_state_digest  # noqa: E402
from reprotrain.checkpoint import list_checkpoints, reader  # noqa: E402
from reprotrain.checkpoint import format as ckformat  # noqa: E402

EXAMPLE = "lightning_digits.py"
ARGS = ["--max-epochs", "2", "--samples", "256", "--save-every", "2"]  # 8 steps per epoch, 16 in all


def _valid(run_dir):
    return [e for e in list_checkpoints(run_dir, deep=True, frameworks=True) if e.valid]


def _newest(run_dir):
    return max(_valid(run_dir), key=lambda e: (e.info.manifest["step"], e.info.manifest["created"]))


def _digest(path):
    return training_state_digest(torch.load(path, weights_only=True)["state"])


def test_interrupted_twice_damaged_newest_skipped_ends_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    code, out, err = run(EXAMPLE, straight, *ARGS)
    assert code == 0, err[-3000:]
    last = reader.read_valid(straight / "last.ckpt").manifest
    assert last["step"] == 16 and last["lineage"][-1]["end_reason"] == "completed"

    broken = tmp_path / "broken"
    code, out, err = interrupt_when(start(EXAMPLE, broken, *ARGS, "--step-delay", "0.3"),
                                    lambda: broken.is_dir() and len(_valid(broken)) >= 2, signal.SIGINT)
    assert code == 130, err[-3000:]
    first = _newest(broken)
    assert first.info.manifest["kind"] == "interrupted" and first.path.name.endswith("-interrupted.ckpt")
    assert first.info.manifest["lineage"][-1]["end_reason"] == "interrupted"
    first_step = first.info.manifest["step"]
    assert 0 < first_step < 16

    proc = start(EXAMPLE, broken, *ARGS, "--step-delay", "0.3")
    code, out, err = interrupt_when(proc, lambda: _newest(broken).info.manifest["step"] > first_step + 1,
                                    signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert f"resuming from {first.path} (interrupted" in err
    second = _newest(broken)
    lineage = second.info.manifest["lineage"]
    assert [s["end_reason"] for s in lineage] == ["interrupted", "preempted"]
    assert lineage[1]["resumed_from"] == first.path.name

    # The newest checkpoint is damaged: ckpt_path="last" skips it and the run still ends bit-identical.
    flip_byte(second.path, second.info.size - 200)
    code, out, err = run(EXAMPLE, broken, *ARGS)
    assert code == 0, err[-3000:]
    assert f"skipping damaged checkpoint {second.path.name}" in err
    done = reader.read_valid(broken / "last.ckpt").manifest
    assert done["step"] == 16 and [s["end_reason"] for s in done["lineage"]][-1] == "completed"
    assert len(done["lineage"]) == 3 and done["run_id"] == first.info.manifest["run_id"]
    assert _digest(broken / "last.ckpt") == _digest(straight / "last.ckpt")
    from reprotrain.audit.verify import verify_paths

    written = [p for p in sorted(broken.glob("*.ckpt")) + sorted(straight.glob("*.ckpt")) if p != second.path]
    results = verify_paths(written)
    assert [r.exit_code for r in results] == [0] * len(results), [r.reason for r in results if r.exit_code]


def test_changed_environment_refused(tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run(EXAMPLE, run_dir, "--max-epochs", "1", "--samples", "64", "--save-every", "1")
    assert code == 0, err[-3000:]
    # Rewrite the newest checkpoint as if another torch minor had written it (a valid checkpoint, another environment).
    path = run_dir / "last.ckpt"
    obj = torch.load(path, weights_only=True)
    obj["reprotrain"] = as_other_environment(obj["reprotrain"])
    with open(path, "wb") as f:
        ckformat.write(f, obj["reprotrain"], obj["state"])
    before = sorted(p.name for p in run_dir.iterdir())
    code, out, err = run(EXAMPLE, run_dir, "--max-epochs", "2", "--samples", "64", "--save-every", "1")
    assert code == 1, err[-3000:]
    assert "refused" in err and "torch.version" in err and "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_hyper_parameters_plain_converted_and_instances_refused_by_key():
    from lightning.pytorch.utilities.parsing import AttributeDict

    from reprotrain.checkpoint.state import UnsafeState
    from reprotrain.integrations.lightning import to_plain

    import numpy as np
    from pathlib import Path

    plain = to_plain({"hyper_parameters": AttributeDict(lr=np.float64(0.1), root=Path("/data"), layers=(1, 2))})
    assert type(plain["hyper_parameters"]) is dict
    assert plain == {"hyper_parameters": {"lr": 0.1, "root": "/data", "layers": (1, 2)}}
    assert type(plain["hyper_parameters"]["lr"]) is float
    with pytest.raises(UnsafeState) as caught:
        to_plain({"hyper_parameters": AttributeDict(lr=0.1, loss=torch.nn.CrossEntropyLoss())})
    message = str(caught.value)
    assert "checkpoint['hyper_parameters']['loss']" in message and "CrossEntropyLoss" in message
    assert "\n" not in message


def _io_checkpoint(step: int) -> dict:
    torch.manual_seed(step)
    return {"state_dict": {"w": torch.randn(3, 2)}, "optimizer_states": [{"state": {}, "param_groups": []}],
            "global_step": step, "epoch": 0, "loops": {"fit_loop": {"state_dict": {}}},
            "hyper_parameters": {"lr": 0.1}, "pytorch-lightning_version": "2.6.6"}


def test_plugin_round_trip_newest_valid_and_gate(tmp_path):
    from reprotrain import fingerprint as fp
    from reprotrain.errors import EnvironmentRefused
    from reprotrain.integrations.lightning import ReprotrainCheckpointIO, newest_valid_checkpoint

    io = ReprotrainCheckpointIO(log=lambda m: None)
    for step in (2, 4, 6):
        io.save_checkpoint(_io_checkpoint(step), tmp_path / f"epoch=0-step={step}.ckpt")
    io.teardown()
    loaded = ReprotrainCheckpointIO(log=lambda m: None).load_checkpoint(tmp_path / "epoch=0-step=4.ckpt")
    assert loaded["global_step"] == 4 and torch.equal(loaded["state_dict"]["w"], _io_checkpoint(4)["state_dict"]["w"])
    assert loaded["hyper_parameters"] == {"lr": 0.1}

    newest = tmp_path / "epoch=0-step=6.ckpt"
    flip_byte(newest, newest.stat().st_size - 300)
    reports = []
    assert newest_valid_checkpoint(tmp_path, log=reports.append) == str(tmp_path / "epoch=0-step=4.ckpt")
    assert any("epoch=0-step=6.ckpt" in r for r in reports)

    strict = ReprotrainCheckpointIO(env_policy=fp.Policy.load(on_mismatch="refuse"), log=lambda m: None)
    obj = torch.load(tmp_path / "epoch=0-step=4.ckpt", weights_only=True)
    obj["reprotrain"] = as_other_environment(obj["reprotrain"])
    with open(tmp_path / "other.ckpt", "wb") as f:
        ckformat.write(f, obj["reprotrain"], obj["state"])
    with pytest.raises(EnvironmentRefused, match="torch.version"):
        strict.load_checkpoint(tmp_path / "other.ckpt")
