"""The checkpoint file: round trip, plain torch.load, integrity, safety of what goes in."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, container, format as ckformat, reader
from reprotrain.checkpoint.container import MANIFEST_RECORD
from reprotrain.checkpoint.reader import CorruptCheckpoint, NotACheckpoint
from reprotrain.checkpoint.state import UnsafeState


class Counter:
    """Extra state of the kind users bind (a data position)."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def make_objects(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return model, optimizer, scheduler, scaler


def train(model, optimizer, scheduler, steps):
    for _ in range(steps):
        loss = model(torch.randn(4, 8)).pow(2).mean() + random.random() * 0 + float(np.random.rand()) * 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_round_trip_restores_every_component_and_rng(tmp_path):
    model, optimizer, scheduler, scaler = make_objects()
    counter = Counter()
    mgr = CheckpointManager(tmp_path, model, optimizer, scheduler, scaler, extra_state={"counter": counter},
                            config={"lr": 0.01, "hub_token": "hf_secret_value"}, save_policy="never")
    train(model, optimizer, scheduler, 3)
    counter.value = 42
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    path = mgr.save("latest", epoch=1, step=3, samples_seen=12, position={"batch": 3})
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    mgr.close()

    model2, optimizer2, scheduler2, scaler2 = make_objects(seed=1)
    counter2 = Counter()
    mgr2 = CheckpointManager(tmp_path, model2, optimizer2, scheduler2, scaler2, extra_state={"counter": counter2})
    info = mgr2.resume()
    assert info.path == path and info.step == 3 and info.epoch == 1 and info.position == {"batch": 3}
    for k, v in model2.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert optimizer2.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert scaler2.state_dict()["scale"] == scaler.state_dict()["scale"]
    assert counter2.value == 42
    draws = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1] and torch.equal(draws[2], expected_draws[2])
    # No secret reaches the checkpoint, in the manifest or in the bytes.
    assert info.config["hub_token"] == "<redacted>"
    assert b"hf_secret_value" not in path.read_bytes()
    mgr2.close()


@pytest.mark.parametrize("kind", ["latest", "periodic", "best", "interrupted", "emergency"])
def test_plain_torch_load_reads_every_kind(tmp_path, kind):
    model, optimizer, scheduler, scaler = make_objects()
    mgr = CheckpointManager(tmp_path, model, optimizer, scheduler, scaler, save_policy="never")
    train(model, optimizer, scheduler, 1)
    path = mgr.save(kind, epoch=0, step=1, samples_seen=4)
    mgr.close()
    obj = torch.load(path, weights_only=True)  # what a user without reprotrain does
    assert obj["reprotrain"]["kind"] == kind
    assert set(obj["state"]) >= {"model", "optimizer", "scheduler", "scaler", "rng"}
    assert torch.equal(obj["state"]["model"]["0.weight"], model.state_dict()["0.weight"])
    assert zipfile.ZipFile(path).testzip() is None  # every CRC-32 in the zip is right
    manifest = json.loads(zipfile.ZipFile(path).read(MANIFEST_RECORD))
    assert manifest == obj["reprotrain"]


def test_zip64_layout_loads(tmp_path):
    state = {"w": torch.arange(1000, dtype=torch.float64), "view": torch.arange(10.0)[2:5], "half": torch.ones(3).half()}
    path = tmp_path / "z.pth"
    with open(path, "wb") as f:
        ckformat.write(f, {"kind": "latest"}, state, force_zip64=True)
    obj = torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(obj["state"]["w"], state["w"]) and obj["state"]["view"].tolist() == [2.0, 3.0, 4.0]
    assert zipfile.ZipFile(path).testzip() is None


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    mgr = CheckpointManager(tmp_path / "run", model, save_policy="never")
    path = mgr.save("latest", epoch=0, step=1, samples_seen=1)
    mgr.close()
    return path


def _is_rejected(path: Path) -> bool:
    try:
        reader.read_valid(path)
    except (CorruptCheckpoint, NotACheckpoint):
        return True
    return False


def _integrity_rejects(data: bytes) -> bool:
    """What read_valid checks before it parses anything: directory, trailer, every byte's digest."""
    f = io.BytesIO(data)
    try:
        directory = container.read_directory(f)
    except container.ContainerError:
        return True
    if MANIFEST_RECORD not in directory.records:
        return True
    try:
        return not container.check_integrity(f, directory).ok
    except container.ContainerError:
        return True


def test_every_single_byte_change_is_detected(small_checkpoint, tmp_path):
    data = small_checkpoint.read_bytes()
    assert not _integrity_rejects(data)
    missed = []
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        if not _integrity_rejects(bytes(damaged)):
            missed.append(offset)
    assert not missed, f"{len(missed)} of {len(data)} flipped bytes went unnoticed, first at {missed[:5]}"
    # And the public entry point agrees on a sample of them, through real files.
    target = tmp_path / "flipped.pth"
    for offset in range(0, len(data), max(1, len(data) // 50)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        target.write_bytes(damaged)
        assert _is_rejected(target), offset


def test_truncation_anywhere_is_detected(small_checkpoint, tmp_path):
    data = small_checkpoint.read_bytes()
    target = tmp_path / "truncated.pth"
    for size in list(range(0, len(data), 37)) + [len(data) - 1]:
        target.write_bytes(data[:size])
        assert _is_rejected(target), f"truncation to {size} bytes not detected"


def test_unsafe_state_is_refused_before_writing(tmp_path):
    class Opaque:
        def state_dict(self):
            return {"fn": object()}

        def load_state_dict(self, state):
            pass

    mgr = CheckpointManager(tmp_path, torch.nn.Linear(2, 2), extra_state={"opaque": Opaque()}, save_policy="never")
    with pytest.raises(UnsafeState, match=r"state\['extra'\]\['opaque'\]\['fn'\] is a builtins.object instance"):
        mgr.save("latest", epoch=0, step=1, samples_seen=1)
    assert not list(tmp_path.glob("*.pth")) and not list(tmp_path.glob(".*.partial"))
    mgr.close()


def test_manifest_records_fingerprint_lineage_and_state_summary(tmp_path):
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(3, 3), save_policy="never", run_id="run-abc",
                            retention=RetentionPolicy(keep_last=5))
    path = mgr.save("latest", epoch=2, step=9, samples_seen=90, metrics={"loss": 0.5, "bad": float("nan")})
    mgr.close()
    m = reader.read_info(path).manifest
    assert m["run_id"] == "run-abc" and m["epoch"] == 2 and m["step"] == 9 and m["samples_seen"] == 90
    assert m["metrics"] == {"loss": 0.5, "bad": None}  # non-finite values are stored as null, JSON stays valid
    assert m["fingerprint_digest"] in m["environments"]
    assert m["lineage"][0]["segment"] == 0 and m["lineage"][0]["last_step"] == 9
    assert m["state"]["components"] == ["model", "rng"] and m["state"]["tensor_bytes"] > 0
