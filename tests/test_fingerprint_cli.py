"""`reprotrain fingerprint` through Click's runner and as a real subprocess (which must not import torch)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import run_cli
from fingerprint_docs import gpu_doc
from reprotrain import fingerprint as fp
from reprotrain.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_json_output_is_a_valid_fingerprint(runner):
    result = runner.invoke(main, ["fingerprint", "--json"])
    assert result.exit_code == 0, result.output
    doc = fp.validate(json.loads(result.output))
    assert "packages" not in doc["packages"]["pip"]


def test_full_lists_every_distribution(runner):
    doc = json.loads(runner.invoke(main, ["fingerprint", "--json", "--full"]).output)
    listed = doc["packages"]["pip"]["packages"]
    assert len(listed) == doc["packages"]["pip"]["count"]
    assert {"name": "click", "version": __import__("importlib.metadata").metadata.version("click")} in listed


def test_human_output_and_output_file(runner, tmp_path):
    out = tmp_path / "fp.json"
    result = runner.invoke(main, ["fingerprint", "-o", str(out), "--code-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = fp.load(out)
    lines = result.output.splitlines()
    assert lines[0].startswith("fingerprint schema v1, collected ")
    python_line = next(line for line in lines if line.startswith("python "))
    assert f"version={written['python']['version']}" in python_line.split()
    assert python_line.endswith("[runtime]")
    assert {line.split()[0] for line in lines[1:-1] if not line.startswith(" ")} == {
        "python", "platform", "torch", "libraries", "accelerators", "determinism", "packages", "lock", "code", "host"}
    assert max(len(line) for line in lines[1:-1]) <= 100  # wrapped for a terminal
    assert f"pip.digest={written['packages']['pip']['digest'][:19]}…" in result.output  # shortened, JSON keeps it
    assert "pip.packages" not in result.output
    assert lines[-1] == f"digest {fp.digest(written)}"


def test_human_full_lists_every_distribution(runner, tmp_path):
    result = runner.invoke(main, ["fingerprint", "--full", "--code-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("python distributions ("))
    count = int(lines[header].split("(")[1].rstrip("):"))
    listed = lines[header + 1:header + 1 + count]
    assert len(listed) == count > 0 and all(line.startswith("  ") for line in listed)
    click_version = __import__("importlib.metadata").metadata.version("click")
    assert f"  click  {click_version}" in listed


def test_compare_with_itself_exits_0(runner, tmp_path):
    out = tmp_path / "fp.json"
    assert runner.invoke(main, ["fingerprint", "--json", "-o", str(out), "--code-dir", str(tmp_path)]).exit_code == 0
    result = runner.invoke(main, ["fingerprint", "--compare", str(out), "--code-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no differences"


def _recorded_elsewhere(tmp_path, **changes) -> str:
    """A fingerprint of this environment as if recorded where CHANGES (dotted field -> value) held."""
    doc = fp.collect(code_dir=str(tmp_path))
    for dotted, value in changes.items():
        section, name = dotted.split(".")
        doc[section][name] = value
    path = tmp_path / "recorded.json"
    fp.write(doc, path)
    return str(path)


def test_compare_refused_by_policy_exits_1_with_the_allow_hint(runner, tmp_path):
    recorded = _recorded_elsewhere(tmp_path, **{"python.version": "2.7.18", "host.name": "elsewhere"})
    result = runner.invoke(main, ["fingerprint", "--compare", recorded, "--code-dir", str(tmp_path)])
    assert result.exit_code == 1
    table = result.stdout.splitlines()
    assert table[1].split()[0::3] == ["python.version", "refuse"]
    assert table[2].split()[0] == "host.name" and table[2].split()[-1] == "info"
    assert result.stderr.strip() == ("reprotrain: refused by policy; to allow: --on-mismatch warn, or a policy file "
                                     "with `python.version: warn`")


def test_compare_refuses_another_torch_minor_and_warns_on_another_build(runner, tmp_path):
    live = fp.collect(code_dir=str(tmp_path))["torch"]["version"]
    major, minor = (int(part) for part in live.split(".")[:2])
    other_minor = _recorded_elsewhere(tmp_path, **{"torch.version": f"{major}.{minor + 1}.0"})
    result = runner.invoke(main, ["fingerprint", "--compare", other_minor, "--code-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    [row] = [line.split() for line in result.stdout.splitlines() if line.startswith("torch.version")]
    assert row == ["torch.version", f"{major}.{minor + 1}.0", live, "refuse"]
    assert "`torch.version: warn`" in result.stderr
    other_build = _recorded_elsewhere(tmp_path, **{"torch.version": f"{major}.{minor}.99+other"})
    result = runner.invoke(main, ["fingerprint", "--compare", other_build, "--code-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(d["field"], d["severity"]) for d in report["differences"]] == [("torch.version", "warn")]


@pytest.mark.parametrize("extra, exit_code", [
    (["--on-mismatch", "warn"], 0), (["--on-mismatch", "ignore"], 0), (["--on-mismatch", "refuse"], 1),
    (["--policy", "POLICY"], 0),
])
def test_compare_overrides(runner, tmp_path, extra, exit_code):
    recorded = _recorded_elsewhere(tmp_path, **{"python.version": "2.7.18"})
    (tmp_path / "policy.yaml").write_text("python.*: warn\n")
    args = [str(tmp_path / "policy.yaml") if a == "POLICY" else a for a in extra]
    result = runner.invoke(main, ["fingerprint", "--compare", recorded, "--json", "--code-dir", str(tmp_path), *args])
    assert result.exit_code == exit_code, result.output
    report = json.loads(result.stdout)
    assert report["refused"] is (exit_code == 1)
    assert [d["field"] for d in report["differences"]] == ["python.version"]


@pytest.mark.parametrize("args, message", [
    (["--compare", "MISSING"], "MISSING: cannot read fingerprint"),
    (["--compare", "BAD"], "BAD: invalid fingerprint: document: 'torch' is a required property"),
    (["--compare", "GOOD", "--policy", "BADPOLICY"], "BADPOLICY: policy entry `torch.version: maybe` must be"),
    (["--policy", "BADPOLICY"], "--policy and --on-mismatch apply only with --compare"),
    (["--compare", "GOOD", "--on-mismatch", "allow"], "Invalid value for '--on-mismatch'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    """As a real subprocess: one line on stderr, no traceback, exit code 2."""
    bad = gpu_doc()
    del bad["torch"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    fp.write(gpu_doc(), tmp_path / "good.json")
    (tmp_path / "policy.yaml").write_text("torch.version: maybe\n")
    names = {"MISSING": tmp_path / "missing.json", "BAD": tmp_path / "bad.json", "GOOD": tmp_path / "good.json",
             "BADPOLICY": tmp_path / "policy.yaml"}
    args = [str(names.get(a, a)) for a in args]
    message = message.replace("MISSING", str(names["MISSING"])).replace("BADPOLICY", str(names["BADPOLICY"]))
    message = message.replace("BAD:", f"{names['BAD']}:")
    result = run_cli("fingerprint", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    if "Invalid value" not in message and "apply only" not in message:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("reprotrain: error: ")


def test_subprocess_compare_refused_exits_1(tmp_path):
    recorded = _recorded_elsewhere(tmp_path, **{"platform.conda_subdir": "osx-arm64"})
    result = run_cli("fingerprint", "--compare", recorded, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "platform.conda_subdir" in result.stdout and "refuse" in result.stdout
    assert "`platform.conda_subdir: warn`" in result.stderr


def _imported_modules(importtime_stderr: str) -> set[str]:
    # `-X importtime` lines: "import time: self | cumulative | module" (nested modules indented)
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize("args", [["--help"], ["fingerprint", "--json"], ["fingerprint", "--help"], ["train", "--help"]])
def test_cli_does_not_import_torch(tmp_path, args):
    result = run_cli(*args, env={"PYTHONPROFILEIMPORTTIME": "1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    modules = _imported_modules(result.stderr)
    assert "click" in modules  # the probe sees imports at all
    if args[0] == "fingerprint" and args[-1] == "--json":
        assert "reprotrain.fingerprint.collect" in modules
        fp.validate(json.loads(result.stdout))
    heavy = ("torch", "lightning", "pytorch_lightning", "lightning_fabric", "transformers", "accelerate", "wandb",
             "mlflow")
    assert not {m for m in modules if m.split(".")[0] in heavy}, "a heavy framework was imported"
