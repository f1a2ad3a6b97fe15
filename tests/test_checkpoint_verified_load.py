"""The one-pass verified load that resume uses: every byte checked while the state is read, the same object
torch.load returns, and any damaged byte refused before anything is adopted."""

from __future__ import annotations

import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, container, reader, state as ckstate
from reprotrain.checkpoint.manifest import CorruptCheckpoint, NotACheckpoint


def _state_with_every_kind_of_tensor() -> dict:
    torch.manual_seed(0)
    base = torch.randn(64, 64)
    return {
        "big": torch.randn(3 << 20),                      # 12 MiB: more than one read chunk, CRC on the second core
        "view": base[8:16, 4:60],                          # a view with an offset into a shared storage
        "base": base,
        "bf16": torch.randn(33).to(torch.bfloat16),
        "half": torch.randn(5, 7).half(),
        "ints": torch.arange(100, dtype=torch.int64),
        "bools": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(3.5),
        "transposed": torch.randn(6, 9).t(),
        "plain": {"step": 7, "lr": 0.1, "name": "x", "nested": [1, (2, 3)]},
    }


class _Holder(torch.nn.Module):
    def __init__(self, tensors: dict):
        super().__init__()
        self.tensors = tensors

    def state_dict(self, *args, **kwargs):
        return self.tensors

    def load_state_dict(self, state, strict=True):
        self.tensors = state


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
                and a.storage_offset() == b.storage_offset() and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture
def checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path / "run", _Holder(_state_with_every_kind_of_tensor()), save_policy="never",
                            log=lambda message: None)
    path = mgr.save(epoch=0, step=1, samples_seen=1)
    mgr.close()
    return path


def test_one_pass_load_returns_what_torch_load_returns(checkpoint):
    with reader.open_checkpoint(checkpoint) as opened:
        ours = ckstate.load(opened, verify=True)
    plain = torch.load(checkpoint, weights_only=True)
    assert _same(ours, plain)
    model = ours["state"]["model"]
    # Views keep sharing their storage, as torch.load gives them.
    assert model["view"].untyped_storage().data_ptr() == model["base"].untyped_storage().data_ptr()


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _offsets(path) -> dict[str, int]:
    with open(path, "rb") as f:
        directory = container.read_directory(f)
    records = directory.records
    big = max((r for r in records.values() if r.name.startswith(container.DATA_PREFIX)), key=lambda r: r.size)
    return {"first byte of the largest tensor": big.data_offset,
            "last byte of the largest tensor": big.data_offset + big.size - 1,
            "a byte of the pickle": records[f"{container.ARCHIVE}/data.pkl"].data_offset + 10,
            "a byte of the manifest": records[container.MANIFEST_RECORD].data_offset + 5,
            "a byte of the central directory": directory.eocd_offset - 3}


@pytest.mark.parametrize("where", ["first byte of the largest tensor", "last byte of the largest tensor",
                                   "a byte of the pickle", "a byte of the manifest",
                                   "a byte of the central directory"])
def test_one_pass_load_refuses_a_flipped_bit(checkpoint, where):
    _flip(checkpoint, _offsets(checkpoint)[where])
    with pytest.raises((CorruptCheckpoint, NotACheckpoint)):
        with reader.open_checkpoint(checkpoint) as opened:
            ckstate.load(opened, verify=True)


def test_one_pass_load_refuses_a_truncated_tensor_record(checkpoint, tmp_path):
    # The directory is intact (copied from the real file) but the bytes of the largest tensor stop early.
    offsets = _offsets(checkpoint)
    data = checkpoint.read_bytes()
    cut = offsets["first byte of the largest tensor"] + 1000
    short = tmp_path / "short.pth"
    short.write_bytes(data[:cut])
    with pytest.raises((CorruptCheckpoint, NotACheckpoint)):
        with reader.open_checkpoint(short) as opened:
            ckstate.load(opened, verify=True)


def test_resume_skips_a_damaged_newest_checkpoint_in_one_pass(tmp_path):
    messages: list[str] = []
    holder = _Holder(_state_with_every_kind_of_tensor())
    mgr = CheckpointManager(tmp_path, holder, save_policy="never", log=messages.append)
    older = mgr.save(epoch=0, step=1, samples_seen=1)
    newer = mgr.save(epoch=0, step=2, samples_seen=2)
    mgr.close()
    _flip(newer, _offsets(newer)["last byte of the largest tensor"])
    resumed = CheckpointManager(tmp_path, _Holder({}), save_policy="never", log=messages.append)
    info = resumed.resume()
    resumed.close()
    assert info is not None and info.path.name == older.name and info.step == 1
    assert any("skipping damaged checkpoint" in m and newer.name in m for m in messages)
    assert _same(resumed.model.tensors, torch.load(older, weights_only=True)["state"]["model"])
