"""examples/hf_trainer_tiny.py with the real transformers Trainer: real SIGINT and SIGTERM, sealed checkpoint-N/
directories, resume from the newest valid one, bit-identical end, damaged newest skipped, changed environment refused."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

pytest.importorskip("transformers", reason="the Hugging Face integration is tested with the real transformers")

from frameworks_util import flip_byte, interrupt_when, reseal_with_torch_version, run, start  # noqa: E402
from reprotrain.checkpoint import sealed  # noqa: E402

EXAMPLE = "hf_trainer_tiny.py"
ARGS = ["--max-epochs", "2", "--samples", "256", "--save-steps", "2"]  # 8 steps per epoch, 16 in all


def _sealed(run_dir):
    return sorted((d for d in run_dir.glob("checkpoint-*") if sealed.is_sealed(d)),
                  key=lambda d: int(d.name.split("-")[1]))


def _final_tensors(directory):
    import torch
    from safetensors.torch import load_file

    model = load_file(str(directory / "model.safetensors"))
    optimizer = torch.load(directory / "optimizer.pt", weights_only=True)
    return model, optimizer


def _same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_interrupted_twice_damaged_newest_skipped_ends_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    code, out, err = run(EXAMPLE, straight, *ARGS)
    assert code == 0, err[-3000:]

    broken = tmp_path / "broken"
    code, out, err = interrupt_when(start(EXAMPLE, broken, *ARGS, "--step-delay", "0.3"),
                                    lambda: len(_sealed(broken)) >= 2, signal.SIGINT)
    assert code == 130, err[-3000:]
    newest = _sealed(broken)[-1]
    manifest = sealed.read_sidecar(newest)["manifest"]
    assert manifest["kind"] == "interrupted" and manifest["lineage"][-1]["end_reason"] == "interrupted"
    first_stop = manifest["step"]
    assert 0 < first_stop < 16

    # A changed environment is refused (exit 1, one line), and nothing is written.
    refused = tmp_path / "refused"
    shutil.copytree(broken, refused)
    reseal_with_torch_version(_sealed(refused)[-1])
    code, out, err = run(EXAMPLE, refused, *ARGS)
    assert code == 1, err[-3000:]
    assert "refused" in err and "torch.version" in err and "Traceback" not in err
    assert [d.name for d in _sealed(refused)] == [d.name for d in _sealed(broken)]

    # Resumed from the interrupted checkpoint, stopped again by SIGTERM.
    proc = start(EXAMPLE, broken, *ARGS, "--step-delay", "0.3")
    code, out, err = interrupt_when(proc, lambda: _sealed(broken)[-1].name != newest.name
                                    and sealed.read_sidecar(_sealed(broken)[-1])["manifest"]["step"] > first_stop + 1,
                                    signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert f"resuming from {newest} (interrupted, step {first_stop})" in err
    second = _sealed(broken)[-1]
    lineage = sealed.read_sidecar(second)["manifest"]["lineage"]
    assert [s["end_reason"] for s in lineage] == ["interrupted", "preempted"]
    assert lineage[1]["resumed_from"] == newest.name

    # The newest checkpoint is damaged: resume skips it, takes the one before, and still ends bit-identical.
    flip_byte(second / "model.safetensors")
    code, out, err = run(EXAMPLE, broken, *ARGS)
    assert code == 0, err[-3000:]
    assert f"skipping damaged checkpoint {second.name}" in err and "model.safetensors" in err
    final = _sealed(broken)[-1]
    assert final.name == "checkpoint-16"
    done = sealed.read_sidecar(final)["manifest"]
    assert done["lineage"][-1]["end_reason"] == "completed" and len(done["lineage"]) == 3
    assert done["run_id"] == manifest["run_id"]
    a, b = _final_tensors(straight / "checkpoint-16"), _final_tensors(final)
    assert _same(a[0], b[0]), "model weights differ from the uninterrupted run"
    assert _same(a[1], b[1]), "optimizer state differs from the uninterrupted run"
    json.dumps(done)  # plain JSON all the way
    from reprotrain.audit.verify import verify_paths

    # (the damaged directory is gone by now: save_total_limit=3 rotated it out after the resume)
    results = verify_paths([d for d in _sealed(broken) if d != second] + _sealed(straight))
    assert results and [r.exit_code for r in results] == [0] * len(results), [r.reason for r in results]


def test_newest_valid_checkpoint_skips_damaged_and_gates(tmp_path):
    from reprotrain.errors import EnvironmentRefused
    from reprotrain.integrations.history import RunHistory
    from reprotrain.integrations.huggingface import newest_valid_checkpoint

    history = RunHistory(log=lambda m: None)
    for step in (2, 4, 6):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(bytes([step]) * 512)
        sealed.seal(d, history.manifest("latest", step=step, epoch=0))
    flip_byte(tmp_path / "checkpoint-6" / "model.safetensors")
    reports = []
    assert newest_valid_checkpoint(tmp_path, log=reports.append) == str(tmp_path / "checkpoint-4")
    assert any("skipping damaged checkpoint checkpoint-6" in r for r in reports)
    reseal_with_torch_version(tmp_path / "checkpoint-4")
    with pytest.raises(EnvironmentRefused, match="torch.version"):
        newest_valid_checkpoint(tmp_path, log=reports.append)
