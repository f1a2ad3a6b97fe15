"""The checkpoint file: round trip, plain torch.load, integrity, safety of what goes in."""

from __future__ import annotations

import io
import json
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, container, format as ckformat, reader
from reprotrain.checkpoint.container import MANIFEST_RECORD
from reprotrain.checkpoint.manifest import CorruptCheckpoint, NotACheckpoint
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


def test_every_single_byte_flipped_is_rejected_by_the_real_reader(small_checkpoint, tmp_path):
    """Each byte of a small checkpoint in turn, inverted, written to a file and read by `read_valid` (what resume
    and `verify` use): not one damaged file is accepted."""
    data = small_checkpoint.read_bytes()
    target = tmp_path / "flipped.pth"
    target.write_bytes(data)
    assert not _is_rejected(target)
    missed = []
    fd = os.open(target, os.O_RDWR)
    try:
        for offset in range(len(data)):
            os.pwrite(fd, bytes([data[offset] ^ 0xFF]), offset)
            if not _is_rejected(target):
                missed.append(offset)
            os.pwrite(fd, data[offset:offset + 1], offset)
    finally:
        os.close(fd)
    assert target.read_bytes() == data
    assert not missed, f"{len(missed)} of {len(data)} flipped bytes went unnoticed, first at {missed[:5]}"


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


def test_manifest_that_breaks_the_schema_is_refused_by_every_reader(tmp_path):
    """Well-formed JSON, intact integrity trailer, but `step` is a string: the schema, not the JSON parser or the
    integrity check, is what refuses it, and resume passes over it to the valid older checkpoint."""
    from audit_checkpoints import manifest_for, small_state
    from reprotrain import fingerprint as fp
    from reprotrain.checkpoint import list_checkpoints, select_for_resume

    state = small_state()
    good = tmp_path / "step0000000001-latest.pth"
    bad = tmp_path / "step0000000009-latest.pth"
    fingerprint = fp.collect()
    with open(good, "wb") as handle:
        ckformat.write(handle, manifest_for(state, fingerprint, step=1), state)
    with open(bad, "wb") as handle:
        ckformat.write(handle, {**manifest_for(state, fingerprint, step=9), "step": "nine"}, state)
    for check in (False, True):
        with pytest.raises(CorruptCheckpoint, match=r"manifest is invalid at step: 'nine' is not of type 'integer'"):
            reader.read_info(bad, check_integrity=check)
    entries = {e.path.name: e for e in list_checkpoints(tmp_path)}
    assert not entries[bad.name].valid and entries[bad.name].problem.startswith("manifest is invalid at step")
    assert select_for_resume(list(entries.values())).path == good


def test_secrets_are_redacted_at_every_depth_of_the_config(tmp_path):
    config = {"lr": 0.1, "hub_token": "top-secret-1",
              "tracking": {"uri": "http://x", "api_key": "top-secret-2",
                           "auth": {"password": "top-secret-3", "user": "me"}},
              "remotes": [{"name": "a", "access_key": "top-secret-4"}], "empty_token": ""}
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(2, 2), config=config, save_policy="never")
    path = mgr.save("latest", epoch=0, step=1, samples_seen=1)
    mgr.close()
    recorded = reader.read_info(path).manifest["config"]
    assert recorded == {"lr": 0.1, "hub_token": "<redacted>", "tracking": {"uri": "http://x", "api_key": "<redacted>",
                        "auth": {"password": "<redacted>", "user": "me"}},
                        "remotes": [{"name": "a", "access_key": "<redacted>"}], "empty_token": ""}
    assert b"top-secret" not in path.read_bytes()
    assert config["tracking"]["api_key"] == "top-secret-2"  # the caller's dict is not modified


def test_rng_capture_and_restore_replay_python_numpy_and_torch_draws():
    from reprotrain.checkpoint import rng

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # both cache a second Gaussian: part of the state too
    saved = rng.capture()
    expected = (random.random(), random.gauss(0, 1), np.random.rand(4).tolist(), np.random.standard_normal(),
                torch.rand(4).tolist())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    assert rng.restore(saved) == []
    assert (random.random(), random.gauss(0, 1), np.random.rand(4).tolist(), np.random.standard_normal(),
            torch.rand(4).tolist()) == expected
