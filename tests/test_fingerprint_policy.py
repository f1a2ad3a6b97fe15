"""Comparison of fingerprints: every default policy rule, policy files, and the global override."""

from __future__ import annotations

import json

import pytest

from fingerprint_docs import gpu_doc, with_value
from reprotrain import fingerprint as fp
from reprotrain.errors import InvalidDocumentError, ReprotrainError

# (field, recorded -> live change, expected severity, default pattern that must decide it)
DEFAULT_CASES = [
    ("python.version", "3.12.1", "refuse", "python.version"),
    ("python.version", "3.11.9", "warn", "python.version"),
    ("python.implementation", "PyPy", "refuse", "python.implementation"),
    ("platform.os", "Darwin", "refuse", "platform.os"),
    ("platform.machine", "aarch64", "refuse", "platform.machine"),
    ("platform.conda_subdir", "linux-aarch64", "refuse", "platform.conda_subdir"),
    ("platform.libc_version", "2.39", "warn", "platform.*"),
    ("platform.libc", "musl", "warn", "platform.*"),
    ("torch.version", "2.15.0+cu124", "refuse", "torch.version"),
    ("torch.version", "3.14.1", "refuse", "torch.version"),
    ("torch.version", "2.14.2+cu124", "warn", "torch.version"),
    ("torch.version", "2.14.1+cu121", "warn", "torch.version"),
    ("torch.version", None, "refuse", "torch.version"),
    ("torch.cuda", "13.0", "refuse", "torch.cuda"),
    ("torch.cuda", None, "refuse", "torch.cuda"),
    ("torch.cuda", "12.1", "warn", "torch.cuda"),
    ("torch.cudnn", "8.9.2", "refuse", "torch.cudnn"),
    ("torch.cudnn", "9.3.0", "warn", "torch.cudnn"),
    ("torch.hip", "6.0", "refuse", "torch.hip"),
    ("torch.git_version", "0" * 40, "warn", "torch.*"),
    ("torch.debug", True, "warn", "torch.*"),
    ("libraries.numpy", "2.0.0", "warn", "libraries.*"),
    ("libraries.torchvision", "0.29.0", "warn", "libraries.*"),
    ("accelerators.devices.0.memory_bytes", 85000000000, "info", "accelerators.devices.*.memory_bytes"),
    ("accelerators.devices.0.name", "NVIDIA A100-SXM4-80GB", "warn", "accelerators.*"),
    ("accelerators.devices.0.compute_capability", "8.0", "warn", "accelerators.*"),
    ("accelerators.driver_version", "535.104.05", "warn", "accelerators.*"),
    ("accelerators.cuda_available", False, "warn", "accelerators.*"),
    ("determinism.cudnn_deterministic", False, "warn", "determinism.*"),
    ("determinism.cudnn_benchmark", True, "warn", "determinism.*"),
    ("determinism.deterministic_algorithms", False, "warn", "determinism.*"),
    ("determinism.tf32_matmul", True, "warn", "determinism.*"),
    ("determinism.float32_matmul_precision", "high", "warn", "determinism.*"),
    ("determinism.cublas_workspace_config", None, "warn", "determinism.*"),
    ("determinism.pythonhashseed", "1", "warn", "determinism.*"),
    ("packages.conda.digest", "sha256:" + "f" * 64, "warn", "packages.*"),
    ("packages.pip.count", 141, "warn", "packages.*"),
    ("packages.conda.prefix", "/scratch/envs/train", "info", "packages.conda.prefix"),
    ("lock.file", "/scratch/run/conda-lock.yml", "info", "lock.file"),
    ("code.repository", "/scratch/project", "info", "code.repository"),
    ("lock.matches", False, "warn", "lock.*"),
    ("lock.content_hash", "0" * 64, "warn", "lock.*"),
    ("code.git_commit", "1" * 40, "warn", "code.*"),
    ("code.git_dirty", True, "warn", "code.*"),
    ("host.name", "gpu-node-02", "info", "host.*"),
]


@pytest.mark.parametrize("field, live_value, severity, pattern", DEFAULT_CASES,
                         ids=[f"{c[0]}={c[1]}" for c in DEFAULT_CASES])
def test_default_policy_rule(field, live_value, severity, pattern):
    result = fp.compare(gpu_doc(), with_value(gpu_doc(), field, live_value))
    assert [(d.field, d.severity) for d in result.differences] == [(field, severity)]
    diff = result.differences[0]
    assert diff.recorded != diff.live and diff.live == live_value
    assert diff.rule.startswith(f"default `{pattern}`")
    assert result.refused == (severity == "refuse")
    assert result.warned == (severity == "warn")


def test_every_default_rule_is_exercised():
    covered = {case[3] for case in DEFAULT_CASES}
    # "*" cannot be reached by a valid document (the schema closes every section): check it directly.
    assert covered | {"*"} == {rule[0] for rule in fp.DEFAULT_RULES}
    assert fp.Policy().decide("future.field", 1, 2) == ("warn", "default `*`: any other difference")


def test_identical_documents_have_no_differences():
    doc = with_value(gpu_doc(), "collected_at", "2030-01-01T00:00:00Z")
    result = fp.compare(gpu_doc(), doc)
    assert result.differences == [] and not result.refused and not result.warned
    assert result.table() == "no differences"
    assert result.allow_hint() == ""


def test_package_lists_and_sources_are_not_compared_field_by_field():
    live = gpu_doc()
    live["packages"]["pip"]["packages"] = [{"name": "numpy", "version": "1.26.4"}]
    live["sources"]["libraries"] = "static"
    assert fp.compare(gpu_doc(), live).differences == []


def test_unknown_runtime_values_in_a_static_fingerprint_only_inform():
    static = gpu_doc()
    static["sources"]["determinism"] = "static"
    for name in ("cudnn_deterministic", "cudnn_benchmark", "deterministic_algorithms",
                 "deterministic_algorithms_warn_only", "tf32_matmul", "tf32_cudnn", "float32_matmul_precision"):
        static["determinism"][name] = None
    result = fp.compare(gpu_doc(), static)
    assert len(result.differences) == 7
    assert {d.severity for d in result.differences} == {"info"}
    # ... but the environment variables are read in both modes, so they still warn
    static["determinism"]["pythonhashseed"] = None
    assert fp.compare(gpu_doc(), static).differences[-1].severity == "warn"
    # and a runtime fingerprint with a switch off is a real difference
    assert fp.compare(gpu_doc(), with_value(gpu_doc(), "determinism.tf32_cudnn", None)).warned


def test_several_differences_keep_document_order_and_render():
    live = with_value(with_value(with_value(gpu_doc(), "host.name", "n2"), "torch.cuda", "13.0"),
                      "python.version", "3.11.8")
    result = fp.compare(gpu_doc(), live)
    assert [d.field for d in result.differences] == ["python.version", "torch.cuda", "host.name"]
    lines = result.table().splitlines()
    assert lines[0].split() == ["FIELD", "RECORDED", "LIVE", "SEVERITY"]
    assert lines[2].split() == ["torch.cuda", "12.4", "13.0", "refuse"]
    assert result.allow_hint() == "--on-mismatch warn, or a policy file with `torch.cuda: warn`"
    as_json = result.to_json()
    assert json.loads(json.dumps(as_json)) == as_json
    assert as_json["refused"] is True and as_json["differences"][1]["severity"] == "refuse"
    assert set(as_json["differences"][0]) == {"field", "recorded", "live", "severity", "rule"}


ALL_DIFFERENT = with_value(with_value(with_value(gpu_doc(), "torch.version", "2.15.0"), "determinism.pythonhashseed",
                                      None), "host.name", "elsewhere")


@pytest.mark.parametrize("on_mismatch, severities, refused", [
    (None, ["refuse", "warn", "info"], True),
    ("refuse", ["refuse", "refuse", "refuse"], True),
    ("warn", ["warn", "warn", "warn"], False),
    ("ignore", ["info", "info", "info"], False),
])
def test_global_override(on_mismatch, severities, refused):
    result = fp.compare(gpu_doc(), ALL_DIFFERENT, fp.Policy.load(None, on_mismatch=on_mismatch))
    assert [d.severity for d in result.differences] == severities
    assert result.refused is refused
    if on_mismatch:
        assert all(d.rule.startswith(f"--on-mismatch {on_mismatch} (was: ") for d in result.differences)


def test_global_override_rejects_unknown_values():
    with pytest.raises(ReprotrainError, match="--on-mismatch must be one of refuse, warn, ignore"):
        fp.Policy.load(None, on_mismatch="allow")


def test_policy_file_overrides_fields_and_globs(tmp_path):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("# allow torch upgrades, be strict about determinism, ignore hosts\n"
                           "torch.version: warn\n'determinism.*': refuse\nhost.*: ignore\n"
                           "determinism.pythonhashseed: info\n")
    policy = fp.Policy.load(policy_file)
    live = with_value(with_value(ALL_DIFFERENT, "determinism.cudnn_benchmark", True), "torch.cuda", "13.0")
    result = fp.compare(gpu_doc(), live, policy)
    decided = {d.field: (d.severity, d.rule) for d in result.differences}
    assert decided["torch.version"] == ("warn", f"policy {policy_file}: `torch.version: warn`")
    assert decided["determinism.cudnn_benchmark"][0] == "refuse"
    assert decided["determinism.pythonhashseed"][0] == "info"  # the exact field beats the glob
    assert decided["torch.cuda"][0] == "refuse"  # not overridden: the default table still applies
    assert "host.name" not in decided  # ignored fields are not listed
    assert result.allow_hint() == ("--on-mismatch warn, or a policy file with `torch.cuda: warn`, "
                                   "`determinism.cudnn_benchmark: warn`")


def test_json_policy_file_and_global_override_on_top(tmp_path):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"host.*": "ignore"}))
    result = fp.compare(gpu_doc(), ALL_DIFFERENT, fp.Policy.load(policy_file, on_mismatch="refuse"))
    assert [(d.field, d.severity) for d in result.differences] == [("torch.version", "refuse"),
                                                                   ("determinism.pythonhashseed", "refuse")]


def test_allow_hint_entries_really_allow(tmp_path):
    live = with_value(with_value(gpu_doc(), "torch.version", "2.15.0"), "platform.conda_subdir", "osx-arm64")
    refused = fp.compare(gpu_doc(), live)
    entries = refused.allow_hint().split("policy file with ")[1]
    policy_file = tmp_path / "allow.yaml"
    policy_file.write_text("".join(entry.strip("` ") + "\n" for entry in entries.split(",")))
    assert not fp.compare(gpu_doc(), live, fp.Policy.load(policy_file)).refused
    assert not fp.compare(gpu_doc(), live, fp.Policy.load(None, on_mismatch="warn")).refused


@pytest.mark.parametrize("content, expected", [
    ("torch.version: allow\n", "policy entry `torch.version: allow` must be one of refuse, warn, info, ignore"),
    ("- torch.version\n", "policy file must be a mapping"),
    ("torch.version: [warn\n", "not valid YAML or JSON at line"),
    ("1: warn\n", "policy key 1 is not a field name or glob"),
    ("torch.version: true\n", "policy entry `torch.version: True`"),
])
def test_bad_policy_files_are_one_line_errors(tmp_path, content, expected):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(content)
    with pytest.raises(InvalidDocumentError) as err:
        fp.Policy.load(policy_file)
    assert str(err.value).startswith(f"{policy_file}: ")
    assert expected in str(err.value)
    assert err.value.exit_code == 2


def test_missing_policy_file(tmp_path):
    with pytest.raises(InvalidDocumentError, match="cannot read policy file: No such file"):
        fp.Policy.load(tmp_path / "absent.yaml")


def test_empty_policy_file_is_the_default_table(tmp_path):
    policy_file = tmp_path / "empty.yaml"
    policy_file.write_text("")
    assert fp.compare(gpu_doc(), ALL_DIFFERENT, fp.Policy.load(policy_file)).to_json() == \
        fp.compare(gpu_doc(), ALL_DIFFERENT).to_json()


def test_compare_validates_both_sides():
    with pytest.raises(InvalidDocumentError, match="<recorded fingerprint>: invalid fingerprint"):
        fp.compare(with_value(gpu_doc(), "torch.cuda", 12), gpu_doc())


def test_unknown_accelerators_in_a_static_fingerprint_only_inform():
    # A static fingerprint taken where NVML bindings are missing knows nothing about the GPUs.
    static = gpu_doc()
    static["sources"]["accelerators"] = "static"
    static["accelerators"] = {"cuda_available": None, "device_count": None, "driver_version": None, "devices": None}
    for recorded, live in ((gpu_doc(), static), (static, gpu_doc())):
        result = fp.compare(recorded, live, fp.Policy.load(None, on_mismatch="refuse"))
        assert [d.field for d in result.differences] == [
            "accelerators.cuda_available", "accelerators.device_count", "accelerators.driver_version",
            "accelerators.devices.0.index", "accelerators.devices.0.name", "accelerators.devices.0.compute_capability",
            "accelerators.devices.0.memory_bytes"]
        assert {d.severity for d in result.differences} == {"info"} and not result.refused
        assert result.differences[0].rule.startswith("devices not known")
    # "no GPU" is an observation, not an unknown: it still warns
    no_gpu = with_value(with_value(gpu_doc(), "accelerators.cuda_available", False), "accelerators.device_count", 0)
    assert {d.severity for d in fp.compare(gpu_doc(), no_gpu).differences} == {"warn"}
