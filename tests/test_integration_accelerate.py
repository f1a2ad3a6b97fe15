"""examples/accelerate_loop.py with the real Accelerate: sealed save_state directories, the load-state hook's gate,
real SIGINT and SIGTERM, resume from the newest valid one, bit-identical end, damaged newest skipped, changed
environment refused."""

from __future__ import annotations

import shutil
import signal

import pytest

pytest.importorskip("accelerate", reason="the Accelerate integration is tested with the real accelerate package")

from frameworks_util import flip_byte, interrupt_when, reseal_with_torch_version, run, start  # noqa: E402
from reprotrain.checkpoint import sealed  # noqa: E402

EXAMPLE = "accelerate_loop.py"
ARGS = ["--max-epochs", "2", "--samples", "256", "--save-every", "2"]  # 8 steps per epoch, 16 in all


def _sealed(run_dir):
    if not run_dir.is_dir():
        return []
    return sorted((d for d in run_dir.glob("checkpoint_*") if sealed.is_sealed(d)),
                  key=lambda d: int(d.name.split("_")[1]))


def _manifest(directory):
    return sealed.read_sidecar(directory)["manifest"]


def test_interrupted_twice_damaged_newest_skipped_ends_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    code, out, err = run(EXAMPLE, straight, *ARGS)
    assert code == 0, err[-3000:]

    broken = tmp_path / "broken"
    code, out, err = interrupt_when(start(EXAMPLE, broken, *ARGS, "--step-delay", "0.3"),
                                    lambda: len(_sealed(broken)) >= 2, signal.SIGINT)
    assert code == 130, err[-3000:]
    first = _sealed(broken)[-1]
    assert _manifest(first)["kind"] == "interrupted"
    first_step = _manifest(first)["step"]
    assert 0 < first_step < 16

    refused = tmp_path / "refused"
    shutil.copytree(broken, refused)
    reseal_with_torch_version(_sealed(refused)[-1])
    code, out, err = run(EXAMPLE, refused, *ARGS)
    assert code == 1, err[-3000:]
    assert "refused" in err and "torch.version" in err and "Traceback" not in err

    proc = start(EXAMPLE, broken, *ARGS, "--step-delay", "0.3")
    code, out, err = interrupt_when(proc, lambda: _manifest(_sealed(broken)[-1])["step"] > first_step + 1,
                                    signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert f"resuming from {first} (interrupted, epoch 0, step {first_step})" in err
    second = _sealed(broken)[-1]
    assert [s["end_reason"] for s in _manifest(second)["lineage"]] == ["interrupted", "preempted"]

    flip_byte(second / "optimizer.bin")
    code, out, err = run(EXAMPLE, broken, *ARGS)
    assert code == 0, err[-3000:]
    assert f"skipping damaged checkpoint {second.name}" in err and "optimizer.bin" in err
    final = _sealed(broken)[-1]
    done = _manifest(final)
    assert final.name == "checkpoint_16" and done["lineage"][-1]["end_reason"] == "completed"
    assert len(done["lineage"]) == 3
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin"):
        assert (final / name).read_bytes() == (straight / "checkpoint_16" / name).read_bytes(), name
    from reprotrain.audit.verify import verify_paths

    results = verify_paths([d for d in _sealed(broken) if d != second] + _sealed(straight))
    assert [r.exit_code for r in results] == [0] * len(results), [r.reason for r in results if r.exit_code]


def test_load_state_hook_refuses_unsealed_and_damaged_directories(tmp_path):
    import torch
    from accelerate import Accelerator

    from reprotrain.checkpoint.manifest import CorruptCheckpoint, NotACheckpoint
    from reprotrain.integrations.accelerate import ReprotrainAccelerate

    model = torch.nn.Linear(3, 2)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(model)
    rt = ReprotrainAccelerate(accelerator, tmp_path, log=lambda m: None)
    rt.save(step=1, epoch=0)
    accelerator.save_state(str(tmp_path / "plain"))  # written by Accelerate alone: never sealed
    with pytest.raises(NotACheckpoint):
        accelerator.load_state(str(tmp_path / "plain"))
    flip_byte(tmp_path / "checkpoint_1" / "model.safetensors")
    with pytest.raises(CorruptCheckpoint, match="model.safetensors"):
        accelerator.load_state(str(tmp_path / "checkpoint_1"))
    assert rt.newest_valid() is None
