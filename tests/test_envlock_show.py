"""Reading real conda-lock files (every one in ../shared/realworld) and `reprotrain lock show`."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REALWORLD, run_cli
from reprotrain.envlock.lockfile import platform_pins, read_lockfile, summarize
from reprotrain.errors import InvalidDocumentError

LOCK_DIRS = ("conda-lock", "conda-lock-fixtures")


def _realworld_files() -> list[Path]:
    if not REALWORLD.is_dir():
        return []
    return sorted(p for d in LOCK_DIRS for p in (REALWORLD / d).iterdir() if p.is_file())


def _is_unified_lock(path: Path) -> bool:
    # What SOURCES.md documents: the conda-lock.yml files are unified locks, everything else is not.
    if path.parent.name == "conda-lock":
        return True
    return re.search(r"__conda-lock(-v[\d.]+)?\.yml$", path.name) is not None


@pytest.mark.parametrize("path", _realworld_files(), ids=lambda p: p.name)
def test_every_realworld_file_parses_or_is_rejected_in_one_line(realworld, path):
    if _is_unified_lock(path):
        lockfile = read_lockfile(path)
        summary = summarize(lockfile, path)
        raw = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        assert summary["platforms"] == raw["metadata"]["platforms"]
        # Counts agree with the raw YAML: one entry per (manager, name, platform), categories folded.
        expected = Counter((p["platform"], p["manager"]) for p in
                           {(p["manager"], p["name"], p["platform"]): p for p in raw["package"]}.values())
        for platform, entry in summary["per_platform"].items():
            assert entry["conda_packages"] == expected[(platform, "conda")]
            assert entry["pip_packages"] == expected[(platform, "pip")]
    else:
        with pytest.raises(InvalidDocumentError) as excinfo:
            read_lockfile(path)
        message = str(excinfo.value)
        assert "\n" not in message and message.startswith(str(path))
        assert excinfo.value.exit_code == 2
        assert "password" not in message  # never echo URLs: they may carry credentials


def _pins(name: str, platform: str) -> dict:
    path = REALWORLD / "conda-lock" / name
    return platform_pins(read_lockfile(path), platform)


def test_pytorch_channel_cuda_build_strings(realworld):
    pins = _pins("01-ai__Yi__conda-lock.yml", "linux-64")
    assert (pins["python"], pins["torch"], pins["torch_variant"], pins["cuda"], pins["cudnn"]) == \
        ("3.10.13", "2.0.1", "cuda", "11.8", "8.7.0")
    # The build field is absent in this older lock: it comes from the archive name.
    assert pins["packages"]["pytorch"]["build"] == "py3.10_cuda11.8_cudnn8.7.0_0"


def test_windows_build_names_cudnn_major_only_and_osx_is_cpu(realworld):
    name = "BioMedIA__deepali__environment.conda-lock.yml"  # version key last, three platforms
    assert _pins(name, "win-64")["cudnn"] == "8"
    osx = _pins(name, "osx-64")
    assert (osx["torch_variant"], osx["cuda"], osx["cudnn"]) == ("cpu", None, None)
    # cuda-version 12.0 coexists with pytorch-cuda 11.8: torch's own build decides.
    linux = _pins(name, "linux-64")
    assert linux["cuda"] == "11.8" and linux["packages"]["cuda-version"]["version"] == "12.0"


def test_conda_forge_build_mirror_urls_and_cudnn_package(realworld):
    pins = _pins("01-ai__Yi__conda-lock__mirror-urls.yml", "linux-64")
    assert (pins["torch"], pins["torch_variant"], pins["cuda"], pins["cudnn"]) == ("2.1.0", "cuda", "11.8", "8.8.0.121")


def test_cpu_mutex_and_md5_only_entries(realworld):
    path = REALWORLD / "conda-lock" / "konstantinjdobler__nlp-research-template__conda-lock__2023-03-version-key-last.yml"
    lockfile = read_lockfile(path)
    assert platform_pins(lockfile, "win-64")["torch_variant"] == "cpu"
    md5_only = [p for p in lockfile.package if p.manager == "conda" and p.hash.sha256 is None]
    assert md5_only and all(p.hash.md5 for p in md5_only)


def test_pip_entries_and_categories(realworld):
    summary = summarize(read_lockfile(REALWORLD / "conda-lock" / "EssiePearl__MolSnapper__conda-lock.yml"),
                        "x.yml")
    assert {p: e["pip_packages"] for p, e in summary["per_platform"].items()} == \
        {"linux-64": 17, "osx-arm64": 17, "osx-64": 17, "win-64": 17}
    assert summary["per_platform"]["linux-64"]["torch"] is None  # torch installed out of band there
    fixture = REALWORLD / "conda-lock-fixtures" / "conda-lock__test-multiple-categories__conda-lock.yml"
    assert summarize(read_lockfile(fixture), fixture)["categories"] == ["dev", "main", "test"]


@pytest.mark.parametrize("content, expected", [
    ("", "empty file"),
    ("version: 1\nmetadata: [\n", "not valid YAML at line"),
    ("- a\n- b\n", "not a mapping"),
    ("version: 3\nmetadata: {}\npackage: []\n", "version 3 is not supported"),
    ("version: 2\nmetadata: {}\npackage: []\n", "invalid conda-lock.yml: metadata"),
    ("metadata: {}\npackage: []\n", "no 'version' key"),
    ("version: 1\npackage: []\n", "no 'metadata' section"),
    ("@EXPLICIT\nhttps://conda.anaconda.org/conda-forge/linux-64/zlib-1.3-h0_0.conda\n", "explicit per-platform"),
    ("name: x\nchannels: [conda-forge]\ndependencies: [python]\n", "an environment file"),
])
def test_bad_documents_get_one_line_reasons(tmp_path, content, expected):
    path = tmp_path / "conda-lock.yml"
    path.write_text(content)
    with pytest.raises(InvalidDocumentError, match=expected) as excinfo:
        read_lockfile(path)
    assert "\n" not in str(excinfo.value)


def test_validation_error_names_the_package(realworld, tmp_path):
    doc = yaml.safe_load((REALWORLD / "conda-lock-fixtures" /
                          "conda-lock__test-update-filter-platform__conda-lock.yml").read_text())
    doc["package"][0]["hash"] = {"sha256": "0" * 64}  # conda entries must carry md5
    path = tmp_path / "conda-lock.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidDocumentError, match=r"package\[0\] \(\w+\) hash: conda package hashes must use MD5"):
        read_lockfile(path)


def test_binary_file_and_directory(tmp_path):
    binary = tmp_path / "lock.yml"
    binary.write_bytes(b"\x80\x81\xff\x00")
    with pytest.raises(InvalidDocumentError, match="not a text file"):
        read_lockfile(binary)
    with pytest.raises(InvalidDocumentError, match="is a directory"):
        read_lockfile(tmp_path)


def test_cli_show_json_and_platform_filter(realworld):
    path = REALWORLD / "conda-lock" / "ChristophHoenes__NumTimeProbe__conda-lock.yml"
    proc = run_cli("lock", "show", str(path), "--platform", "win-64", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert list(doc["per_platform"]) == ["win-64"]
    assert doc["per_platform"]["win-64"]["torch"] == "2.5.1" and doc["per_platform"]["win-64"]["cudnn"] == "9"
    human = run_cli("lock", "show", str(path))
    assert human.returncode == 0 and "osx-arm64" in human.stdout and "2.5.1" in human.stdout


def test_cli_show_rejects_without_traceback(realworld):
    explicit = REALWORLD / "conda-lock-fixtures" / "conda-lock__zlib__conda-linux-64.lock"
    proc = run_cli("lock", "show", str(explicit))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"reprotrain: error: {explicit}: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    unknown = run_cli("lock", "show", str(REALWORLD / "conda-lock" / "01-ai__Yi__conda-lock.yml"),
                      "--platform", "win-64")
    assert unknown.returncode == 2 and "platform win-64 is not in the lock" in unknown.stderr
