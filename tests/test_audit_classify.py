"""Every real-world and malicious file gets its exit code and category, and nothing in them ever runs."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import zipfile

import pytest
from click.testing import CliRunner

from reprotrain.audit import classify as foreign
from reprotrain.audit import verify_paths, worst_exit_code
from reprotrain.cli import main
from tests.conftest import run_cli

# file -> (exit code, category, text the reason must contain). Read from the realworld SOURCES.md, file by file.
CHECKPOINTS = {
    "EssiePearl__MolSnapper__data_MOAD_test_full.pt": (3, "pytorch-zip", "zip format"),
    "Pickle.jl__test_torch_test_bin__bool.bin__legacy-format.bin": (3, "pytorch-legacy", "legacy format"),
    "Pickle.jl__test_torch_test_bin__linear_state.bin__legacy-format.bin": (3, "pytorch-legacy", "legacy format"),
    "Pickle.jl__test_torch_test_bin__offset-strides.bin__legacy-format.bin": (3, "pytorch-legacy", "legacy format"),
    "Pickle.jl__test_torch_test_bin__reshape.bin__legacy-format.bin": (3, "pytorch-legacy", "legacy format"),
    "Pickle.jl__test_torch_test_bin__slice.bin__legacy-format.bin": (3, "pytorch-legacy", "legacy format"),
    "Pickle.jl__test_torch_test_bin__strides.bin__legacy-format.bin": (3, "pytorch-legacy", "legacy format"),
    "burn__burn-store_reader_test_data__bfloat16.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__broken.pt": (2, "truncated", "only 3 bytes"),
    "burn__burn-store_reader_test_data__buffers.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__checkpoint.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__empty.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__float16.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__legacy_shared_storage.pt": (3, "pytorch-legacy", "legacy format"),
    "burn__burn-store_reader_test_data__legacy_uncloned_views.pt": (3, "pytorch-legacy", "legacy format"),
    "burn__burn-store_reader_test_data__legacy_with_offsets.pt": (3, "pytorch-legacy", "legacy format"),
    "burn__burn-store_reader_test_data__mixed_types.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__nested_dict.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__parameter.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__scalar.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__simple_legacy.pt": (3, "pytorch-legacy", "legacy format"),
    "burn__burn-store_reader_test_data__special_values.pt": (3, "pytorch-zip", "zip format"),
    "burn__burn-store_reader_test_data__tar_weight_bias__SYNTHETIC-pre0.1.10-tar.tar": (3, "pytorch-tar", "tar format"),
    "burn__pytorch-tests__complex_nested.pt": (3, "pytorch-zip", "zip format"),
    "burn__pytorch-tests__config__weights_with_config.pt": (3, "pytorch-zip", "zip format"),
    "burn__pytorch-tests__enum_depthwise_true.pt": (3, "pytorch-zip", "zip format"),
    "burn__pytorch-tests__top_level_key.pt": (3, "pytorch-zip", "zip format"),
    "candle__candle-core_tests__fortran_tensor_3d.pth": (3, "pytorch-zip", "zip format"),
    "candle__candle-core_tests__test.pt": (3, "pytorch-zip", "zip format"),
    "gopickle__testdata__tensor_bfloat16_proto2__legacy__torch1.13.1.pt": (3, "pytorch-legacy", "legacy format"),
    # Pickle protocol 1: statically safe, but torch's weights-only unpickler lacks opcode "L" (76).
    "gopickle__testdata__tensor_float32_proto1__legacy__torch1.13.1.pt": (3, "pytorch-legacy", "Unsupported operand 76"),
    "gopickle__testdata__tensor_float32_proto2__legacy__torch1.5.0.pt": (3, "pytorch-legacy", "legacy format"),
    # Pickle protocol 5: FRAME (149) is not implemented by the weights-only unpickler.
    "gopickle__testdata__tensor_float32_proto5_zip__torch1.13.1.pt": (3, "pytorch-zip", "Unsupported operand 149"),
    "picklescan__tests_data__new_pytorch_model.bin__zip-format-benign.bin": (3, "pytorch-zip", "zip format"),
    "picklescan__tests_data__pytorch_model.bin__legacy-format-benign.bin": (3, "pytorch-legacy", "legacy format"),
    "rl-trained-agents__a2c_CartPole-v1__sb3-2.4.0a11.zip": (3, "zip-of-pytorch-files", "policy.pth"),
    "rl-trained-agents__ppo_CartPole-v1__EXTRACTED__policy.optimizer.pth": (3, "pytorch-zip", "zip format"),
    "rl-trained-agents__ppo_CartPole-v1__sb3-1.0rc0.zip": (3, "zip-of-pytorch-files", "policy.optimizer.pth"),
}

MALICIOUS = {
    "picklescan__tests_data2_GHSA-4r9r-ch6f-vxmx.pkl": (2, "unsafe-pickle", "torch.utils.bottleneck"),
    "picklescan__tests_data2_GHSA-86cj-95qr-2p4f.pkl": (2, "unsafe-pickle", "torch._dynamo.guards"),
    "picklescan__tests_data2_GHSA-f745-w6jp-hpxx.pkl": (2, "unsafe-pickle", "torch.utils.collect_env.run"),
    "picklescan__tests_data2_GHSA-vv6j-3g6g-2pvj.pkl": (2, "unsafe-pickle", "_config_module.ConfigModule.load_config"),
    "picklescan__tests_data2_malicious1_crc.zip": (2, "unsafe-pickle", "builtins.eval"),
    "picklescan__tests_data2_type-confusion-exploit.pkl": (2, "unsafe-pickle", "os.system"),
    "picklescan__tests_data_bad_pytorch.pt": (2, "not-pytorch", "PNG"),
    "picklescan__tests_data_malicious-invalid-bytes.pkl": (2, "unsafe-pickle", "os.system"),
    "picklescan__tests_data_malicious1.zip": (2, "unsafe-pickle", "builtins.eval"),
    "picklescan__tests_data_malicious17.pkl": (2, "unsafe-pickle", "torch._inductor.codecache.compile_file"),
    "picklescan__tests_data_malicious19.pkl": (2, "unsafe-pickle", "torch.serialization.load"),
    "picklescan__tests_data_malicious1_wrong_ext.zip": (2, "unsafe-pickle", "data.txt"),
    "picklescan__tests_data_pytorch_magic_bypass.pt": (2, "unsafe-pickle", "builtins.eval"),
}


def test_expectation_tables_cover_every_file(realworld):
    assert sorted(CHECKPOINTS) == sorted(os.listdir(realworld / "checkpoints"))
    assert sorted(MALICIOUS) == sorted(os.listdir(realworld / "malicious-pickles"))


@pytest.mark.parametrize("name", sorted(CHECKPOINTS) + sorted(MALICIOUS))
def test_every_realworld_file_is_classified(realworld, name):
    folder, (code, category, text) = (("checkpoints", CHECKPOINTS[name]) if name in CHECKPOINTS
                                      else ("malicious-pickles", MALICIOUS[name]))
    [result] = verify_paths([realworld / folder / name], against=None, digest=True)
    assert (result.exit_code, result.category) == (code, category), result.reason
    assert text in result.reason
    assert "\n" not in result.reason


def test_cli_classifies_both_folders_in_one_run_without_a_traceback(realworld, tmp_path):
    files = sorted((realworld / "checkpoints").iterdir()) + sorted((realworld / "malicious-pickles").iterdir())
    done = run_cli("verify", "--json", *map(str, files), cwd=tmp_path)
    assert done.returncode == 2  # the worst: corrupt and unsafe files outrank foreign ones
    assert "Traceback" not in done.stderr
    doc = json.loads(done.stdout)
    expected = {**CHECKPOINTS, **MALICIOUS}
    assert [(os.path.basename(r["path"]), r["exit_code"]) for r in doc["results"]] == \
        [(f.name, expected[f.name][0]) for f in files]
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_allowlist_is_within_what_torchs_weights_only_unpickler_allows():
    from torch._weights_only_unpickler import _get_allowed_globals

    assert foreign.SAFE_GLOBALS <= set(_get_allowed_globals())
    assert "torch.utils.collect_env.run" not in foreign.SAFE_GLOBALS


def test_worst_exit_code_order():
    assert worst_exit_code([0, 1, 3, 2]) == 2
    assert worst_exit_code([1, 3, 0]) == 3
    assert worst_exit_code([0, 1]) == 1
    assert worst_exit_code([]) == 0


# --------------------------------------------------------------------------- canaries


class _OpenCanary:
    """Unpickling this creates the canary file (through builtins.open)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class _SystemCanary:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch '{self.path}'",)


class _TorchGadgetCanary:
    """A torch-internal gadget: torch.utils.collect_env.run runs a shell command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        from torch.utils.collect_env import run

        return run, (f"touch '{self.path}'",)


def _legacy_layout(payload: object) -> bytes:
    out = io.BytesIO()
    for part in (foreign.LEGACY_MAGIC, foreign.LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True},
                 payload, []):
        pickle.dump(part, out, protocol=2)
    return out.getvalue()


def _zip_layout(payload: object) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state": payload}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def _sb3_layout(payload: object) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", _zip_layout(payload))
    return out.getvalue()


LAYOUTS = {
    "plain-pickle-proto2": lambda p: pickle.dumps(p, protocol=2),
    "plain-pickle-proto4-memoized": lambda p: pickletools.optimize(pickle.dumps([p, p], protocol=4)),
    "plain-pickle-proto0": lambda p: pickle.dumps(p, protocol=0),
    "zip-torch": _zip_layout,
    "legacy": _legacy_layout,
    "nested-zip": _sb3_layout,
}
# open pickles as io.open under protocols 0-2 and builtins.open under 4: either name is refused.
CANARIES = {"open": (_OpenCanary, ("io.open", "builtins.open")), "system": (_SystemCanary, ("posix.system",)),
            "torch-gadget": (_TorchGadgetCanary, ("torch.utils.collect_env.run",))}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("canary", sorted(CANARIES))
def test_canary_payloads_are_refused_and_never_run(tmp_path, layout, canary):
    make, imported = CANARIES[canary]
    target = tmp_path / "canary"
    path = tmp_path / f"payload-{layout}.pt"
    path.write_bytes(LAYOUTS[layout](make(target)))
    verdict = foreign.classify(path)
    assert (verdict.exit_code, verdict.category) == (2, "unsafe-pickle")
    assert any(f"imports {name}" in verdict.reason for name in imported), verdict.reason
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == 2 and "unsafe pickle" in result.output
    assert not target.exists()


def test_the_canary_is_live(tmp_path):
    """Control: the same payload, really unpickled, does create the file; so its absence above means something."""
    target = tmp_path / "canary"
    pickle.loads(pickle.dumps(_OpenCanary(target), protocol=2)).close()
    assert target.exists()


def test_canary_refused_through_a_real_subprocess(tmp_path):
    target = tmp_path / "canary"
    path = tmp_path / "model.pth"
    path.write_bytes(_legacy_layout(_SystemCanary(target)))
    done = run_cli("verify", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "unsafe pickle (legacy object): imports posix.system" in done.stdout
    assert "Traceback" not in done.stderr
    assert not target.exists()


@pytest.mark.parametrize("data, category", [
    (b"", "empty"),
    (b"\x80\x02", "truncated"),
    (pickle.dumps({"a": 1}, protocol=2), "plain-pickle"),
    (b"GIF89a" + b"\0" * 40, "not-pytorch"),
    (_legacy_layout({"w": 1})[:-3], "corrupt-legacy"),
    (_zip_layout({"w": 1})[:-30], "corrupt-zip"),
])
def test_broken_and_non_pytorch_inputs_exit_2(tmp_path, data, category):
    path = tmp_path / "input.pt"
    path.write_bytes(data)
    verdict = foreign.classify(path)
    assert (verdict.exit_code, verdict.category) == (2, category), verdict.reason


def test_stack_global_from_memo_is_resolved():
    # Protocol 4 with memoised strings: STACK_GLOBAL's operands come through the memo, not literal pushes.
    data = pickletools.optimize(pickle.dumps([os.system, os.system], protocol=4))
    assert foreign.scan_pickle(data).unsafe() == ["posix.system"]
