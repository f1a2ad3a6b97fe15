"""Asynchronous saves from CUDA tensors: the device-to-host copy into pinned buffers overlaps training, and the
checkpoint holds the values at the moment of the save, even when training changes the tensors right after.

Needs a GPU: this project's own machine has none (the tests are skipped there with that reason); the GPU machine
lent to some sessions runs them."""

from __future__ import annotations

import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, state as ckstate, store

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@cuda
def test_snapshot_copies_into_pinned_buffers_and_reports_an_event_per_device():
    snapshot = ckstate.Snapshot()
    tree = {"w": torch.arange(1 << 20, dtype=torch.float32, device="cuda")}
    snap = snapshot.take(tree)
    events = snapshot.copied()
    assert len(events) == 1 and snap["w"].is_pinned() and not snap["w"].is_cuda
    tree["w"].add_(1)  # queued behind the copy on the same stream
    events[0].synchronize()
    assert torch.equal(snap["w"], torch.arange(1 << 20, dtype=torch.float32))
    assert snapshot.copied() == []  # nothing copied since


@cuda
def test_async_save_from_cuda_holds_the_values_at_save_time(tmp_path):
    model = torch.nn.Linear(1024, 1024).cuda()
    mgr = CheckpointManager(tmp_path, model, save_policy="never", async_save=True, log=lambda m: None,
                            retention=RetentionPolicy(keep_last=5))
    expected = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    mgr.save("latest", epoch=0, step=1, samples_seen=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-3.0)  # training goes on at once; the saved values must be those of step 1
    mgr.close()  # waits for the background save
    (entry,) = [e for e in store.list_checkpoints(tmp_path) if e.valid]
    saved = ckstate.load(entry.path)["state"]["model"]
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def test_snapshot_of_cpu_state_needs_no_event():
    snapshot = ckstate.Snapshot()
    tree = {"w": torch.ones(4), "step": 3}
    snap = snapshot.take(tree)
    assert snapshot.copied() == [] and torch.equal(snap["w"], tree["w"]) and snap["step"] == 3
    tree["w"].add_(1)
    assert torch.equal(snap["w"], torch.ones(4))  # a copy, not a view
