"""Sealed checkpoint directories (the sidecar of docs/checkpoint-format.md section 7): sealing, every kind of damage
reported, newest valid picked, and `reprotrain verify / inspect / ls / diff` accepting them. No framework needed."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from reprotrain.checkpoint import reader, sealed, store
from reprotrain.checkpoint.manifest import CorruptCheckpoint, NotACheckpoint
from reprotrain.cli import main
from reprotrain.integrations.history import RunHistory


@pytest.fixture(scope="module")
def history():
    return RunHistory(log=lambda m: None, config={"lr": 0.1, "api_token": "hunter2"})


def make(parent, step, history, *, kind="latest", end="running"):
    directory = parent / f"checkpoint-{step}"
    (directory / "sub").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(os.urandom(4096))
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (directory / "sub" / "extra.bin").write_bytes(b"x" * 100)
    sealed.seal(directory, history.manifest(kind, step=step, epoch=0, end_reason=end))
    return directory


def test_sealed_directory_reads_back_and_every_damage_is_named(tmp_path, history):
    d = make(tmp_path, 4, history)
    info = reader.read_info(d, check_integrity=True)
    assert info.manifest["step"] == 4 and info.manifest["config"]["api_token"] == "<redacted>"
    assert info.manifest["state"]["components"] == ["model.safetensors", "sub/extra.bin", "trainer_state.json"]
    assert not list(d.glob(".*partial"))

    data = bytearray((d / "model.safetensors").read_bytes())
    data[100] ^= 1
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="model.safetensors: content differs"):
        reader.read_info(d, check_integrity=True)
    reader.read_info(d)  # without the check: the manifest alone still reads

    d2 = make(tmp_path, 8, history)
    (d2 / "late.bin").write_bytes(b"after the seal")
    (d2 / "sub" / "extra.bin").unlink()
    with pytest.raises(CorruptCheckpoint) as caught:
        reader.read_info(d2, check_integrity=True)
    assert "sub/extra.bin: missing" in caught.value.message and "late.bin: not sealed" in caught.value.message

    d3 = make(tmp_path, 12, history)
    text = (d3 / sealed.SIDECAR).read_text().replace('"step": 12', '"step": 13')
    (d3 / sealed.SIDECAR).write_text(text)
    with pytest.raises(CorruptCheckpoint, match="integrity digest"):
        reader.read_info(d3)

    unsealed = tmp_path / "checkpoint-16"
    unsealed.mkdir()
    (unsealed / "model.safetensors").write_bytes(b"0")
    with pytest.raises(NotACheckpoint, match="no reprotrain-manifest.json"):
        reader.read_info(unsealed)


def test_newest_valid_skips_damaged_and_unsealed(tmp_path, history):
    make(tmp_path, 2, history)
    make(tmp_path, 4, history, kind="interrupted", end="interrupted")
    newest = make(tmp_path, 6, history)
    (newest / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()  # the writer died before sealing
    reports = []
    entries = store.list_checkpoints(tmp_path, frameworks=True)
    assert store.list_checkpoints(tmp_path) == []  # CheckpointManager's own listing: .pth files only
    chosen = store.select_for_resume(entries, report=reports.append)
    assert chosen.path.name == "checkpoint-4"
    assert any("checkpoint-6" in r and "trainer_state.json" in r for r in reports)
    assert any("checkpoint-8" in r for r in reports)


def test_cli_verify_inspect_ls_diff_accept_sealed_directories(tmp_path, history):
    good = make(tmp_path, 2, history)
    bad = make(tmp_path, 4, history)
    (bad / "model.safetensors").write_bytes(b"truncated")
    unsealed = tmp_path / "checkpoint-6"
    unsealed.mkdir()
    runner = CliRunner()

    result = runner.invoke(main, ["verify", str(good)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["verify", "--json", str(bad)])
    assert result.exit_code == 2
    [row] = json.loads(result.output)["results"]
    assert row["category"] == "corrupt" and "model.safetensors: size" in row["reason"]
    result = runner.invoke(main, ["verify", str(unsealed)])
    assert result.exit_code == 3, result.output

    result = runner.invoke(main, ["inspect", "--json", str(good)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [f["path"] for f in report["files"]] == ["model.safetensors", "sub/extra.bin", "trainer_state.json"]
    result = runner.invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 2 and "model.safetensors" in result.output

    result = runner.invoke(main, ["ls", "--json", str(tmp_path)])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["resume"] == str(good)
    assert {r["name"]: r["valid"] for r in listing["checkpoints"]} == {
        "checkpoint-2": True, "checkpoint-4": False, "checkpoint-6": False}

    other = make(tmp_path / "b", 8, history)
    result = runner.invoke(main, ["diff", "--json", str(good), str(other)])
    assert json.loads(result.output)["lineage"]["same_run"]
