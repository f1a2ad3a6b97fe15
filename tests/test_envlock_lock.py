"""`reprotrain lock` and `lock --check` against a real local channel that the tests build."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REALWORLD, run_cli
from local_channel import local_channel_fixture, write_environment_file
from reprotrain.envlock.lockfile import platform_pins, read_lockfile
from reprotrain.envlock.solve import SolveError, find_conda_executable, lock
from reprotrain.envlock.staleness import check
from reprotrain.errors import InvalidDocumentError, ReprotrainError

channel = local_channel_fixture()
CONDA_EXE = find_conda_executable()
SPECS = ["python 3.11.*", "pytorch", "click"]


@pytest.fixture(scope="module")
def locked(channel, tmp_path_factory):
    """One rattler lock of SPECS for the four default platforms, shared by read-only tests."""
    root = tmp_path_factory.mktemp("locked")
    env = write_environment_file(root / "environment.yml", channel, SPECS)
    result = lock([env], lockfile=root / "conda-lock.yml", solver="rattler")
    return root, env, result


def test_rattler_solves_the_default_platforms_into_conda_lock_format(locked, channel):
    from conda_lock.lockfile import parse_conda_lock_file

    root, _, result = locked
    assert result["solver"] == "rattler"
    assert result["platforms"] == ["linux-64", "osx-arm64", "osx-64", "win-64"]  # conda-lock's default set
    parsed = parse_conda_lock_file(root / "conda-lock.yml")  # conda-lock's own reader accepts it
    assert parsed.metadata.sources == ["environment.yml"]
    pins = {p: platform_pins(parsed, p) for p in result["platforms"]}
    # `__cuda` is among conda-lock's default virtual packages on linux and windows, not on macOS.
    assert pins["linux-64"]["cuda"] == "12.4" and pins["win-64"]["cudnn"] == "9.1.0.70"
    assert pins["osx-arm64"]["torch_variant"] == "cpu" and pins["osx-arm64"]["cuda"] is None
    for package in parsed.package:
        archive = channel.archive(package.name, subdir=package.url.rsplit("/", 2)[-2], version=package.version,
                                  build=package.build)
        data = archive.path.read_bytes()
        assert package.hash.sha256 == hashlib.sha256(data).hexdigest()
        assert package.hash.md5 == hashlib.md5(data).hexdigest()
        assert package.categories == {"main"}


def test_content_hash_is_conda_locks_own(locked):
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.src_parser import make_lock_spec
    from conda_lock.virtual_package import default_virtual_package_repodata

    root, env, result = locked
    spec = make_lock_spec(src_files=[env], platform_overrides=result["platforms"],
                          mapping_url=(Path(__file__).parents[1] / "reprotrain/envlock/pypi_to_conda_mapping.json").as_uri())
    assert compute_content_hashes(spec, default_virtual_package_repodata()) == result["content_hash"]


def test_lock_is_byte_reproducible(locked, tmp_path):
    root, env, _ = locked
    again = tmp_path / "conda-lock.yml"
    # Same sources path relative to each lock, so the files must be identical byte for byte.
    (tmp_path / "environment.yml").write_bytes(env.read_bytes())
    lock([tmp_path / "environment.yml"], lockfile=again, solver="rattler")
    assert again.read_bytes() == (root / "conda-lock.yml").read_bytes()


def test_conda_lock_render_reads_the_lock(locked):
    root, _, _ = locked
    proc = subprocess.run([sys.executable, "-m", "conda_lock", "render", "--kind", "explicit", "-p", "linux-64",
                           "--filename-template", str(root / "rendered-{platform}.lock"),
                           str(root / "conda-lock.yml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rendered = (root / "rendered-linux-64.lock").read_text()
    assert "@EXPLICIT" in rendered and "pytorch-2.14.1-cuda124_py311h0_1.conda" in rendered


def test_check_fresh_then_stale_names_what_changed(locked, tmp_path):
    root, env, _ = locked
    assert check(root / "conda-lock.yml")["stale"] is False
    changed = write_environment_file(tmp_path / "environment.yml", yaml.safe_load(env.read_text())["channels"][0],
                                     ["python 3.12.*", "pytorch", "click", "tzdata <2000"])
    result = check(root / "conda-lock.yml", [changed])
    assert result["stale"] is True
    linux = result["platforms"]["linux-64"]
    assert linux["status"] == "stale" and linux["locked_hash"] != linux["input_hash"]
    assert "python: locked 3.11.7 does not satisfy 3.12.*" in linux["changes"]
    assert "tzdata: locked 2024a does not satisfy <2000" in linux["changes"]


def test_check_platform_and_channel_changes(locked, tmp_path):
    root, env, _ = locked
    result = check(root / "conda-lock.yml", platforms=["linux-64", "linux-aarch64"])
    assert result["platforms"]["linux-64"]["status"] == "fresh"
    assert result["platforms"]["linux-aarch64"]["status"] == "not locked"
    other = tmp_path / "environment.yml"
    doc = yaml.safe_load(env.read_text())
    doc["channels"].append("conda-forge")
    other.write_text(yaml.safe_dump(doc))
    changes = check(root / "conda-lock.yml", [other])["platforms"]["win-64"]["changes"]
    assert any(c.startswith("channels changed") for c in changes)


def test_check_added_package_and_undeclared_platform(locked, tmp_path):
    root, env, _ = locked
    doc = yaml.safe_load(env.read_text())
    doc["dependencies"].append("never-heard-of-it")
    doc["platforms"] = ["linux-64", "win-64"]
    edited = tmp_path / "environment.yml"
    edited.write_text(yaml.safe_dump(doc))
    result = check(root / "conda-lock.yml", [edited])
    assert result["platforms"]["osx-arm64"]["status"] == "not declared"
    assert "never-heard-of-it: requested but not in the lock (added)" in result["platforms"]["linux-64"]["changes"]


def test_cli_check_exit_codes(locked, tmp_path):
    root, env, _ = locked
    fresh = run_cli("lock", "--check", "--lockfile", str(root / "conda-lock.yml"), "--json")
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["stale"] is False
    edited = tmp_path / "environment.yml"
    edited.write_text(env.read_text().replace("python 3.11.*", "python 3.11.7"))
    stale = run_cli("lock", "--check", "--lockfile", str(root / "conda-lock.yml"), "-f", str(edited))
    assert stale.returncode == 1 and "STALE for linux-64, osx-arm64, osx-64, win-64" in stale.stdout
    broken = tmp_path / "broken.yml"
    broken.write_text("dependencies: [python\n")
    bad = run_cli("lock", "--check", "--lockfile", str(root / "conda-lock.yml"), "-f", str(broken))
    assert bad.returncode == 2 and bad.stderr.startswith(f"reprotrain: error: {broken}: not valid YAML")
    assert "Traceback" not in bad.stderr
    missing = run_cli("lock", "--check", "--lockfile", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_check_agrees_with_a_real_conda_lock_hash(realworld):
    # The lock and environment.yml of one real project at one commit: conda-lock's hash is reproduced.
    result = check(realworld / "conda-lock" / "konstantinjdobler__nlp-research-template__conda-lock.yml",
                   [realworld / "environment-yml" / "konstantinjdobler__nlp-research-template__environment.yml"])
    assert {p: e["status"] for p, e in result["platforms"].items()} == \
        {"linux-64": "fresh", "osx-arm64": "fresh", "win-64": "fresh"}
    # Another project added seaborn after locking: a real stale lock, and the diagnosis names it.
    stale = check(realworld / "conda-lock" / "ChristophHoenes__NumTimeProbe__conda-lock.yml",
                  [realworld / "environment-yml" / "ChristophHoenes__NumTimeProbe__environment.yml"])
    assert stale["stale"] and "seaborn: requested but not in the lock (added)" in stale["platforms"]["linux-64"]["changes"]


def test_pip_section_is_rejected_by_rattler_naming_the_fallback(channel, tmp_path):
    env = write_environment_file(tmp_path / "environment.yml", channel, ["python 3.11.*"], pip=["requests==2.31.0"])
    with pytest.raises(InvalidDocumentError, match=r"pip dependencies \(requests\).*conda, mamba or micromamba"):
        lock([env], lockfile=tmp_path / "conda-lock.yml", solver="rattler")
    assert not (tmp_path / "conda-lock.yml").exists()


def test_unsolvable_is_exit_1_and_writes_nothing(channel, tmp_path):
    env = write_environment_file(tmp_path / "environment.yml", channel, ["python 3.99.*"])
    with pytest.raises(SolveError, match="linux-64: no solution") as excinfo:
        lock([env], lockfile=tmp_path / "conda-lock.yml", platforms=["linux-64"], solver="rattler")
    assert excinfo.value.exit_code == 1
    assert not (tmp_path / "conda-lock.yml").exists()


def test_selectors_and_explicit_platforms(channel, tmp_path):
    env = tmp_path / "environment.yml"
    env.write_text(f"channels:\n  - {channel.url}\ndependencies:\n  - python 3.11.*\n"
                   "  - cudnn  # [linux]\n")
    lock([env], lockfile=tmp_path / "conda-lock.yml", platforms=["linux-64", "osx-arm64"], solver="rattler")
    lockfile = read_lockfile(tmp_path / "conda-lock.yml")
    assert lockfile.metadata.platforms == ["linux-64", "osx-arm64"]
    names = {(p.platform, p.name) for p in lockfile.package}
    assert ("linux-64", "cudnn") in names and ("osx-arm64", "cudnn") not in names


def test_cli_lock_writes_and_rejects_bad_env(channel, tmp_path):
    env = write_environment_file(tmp_path / "environment.yml", channel, ["click"], platforms=["osx-arm64"])
    proc = run_cli("lock", "--solver", "rattler", "--json", cwd=tmp_path)  # default -f environment.yml
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["platforms"] == ["osx-arm64"]
    assert read_lockfile(tmp_path / "conda-lock.yml").metadata.sources == [env.name]
    (tmp_path / "bad.yml").write_text("name: x\n")
    bad = run_cli("lock", "-f", "bad.yml", "--solver", "rattler", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == "reprotrain: error: bad.yml: not a conda environment file: no 'dependencies' list\n"


def test_lock_help_never_imports_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "reprotrain", "lock", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "reprotrain.cli" in imported  # the probe really saw the imports
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    assert "conda_lock" not in imported and "rattler" not in imported


@pytest.mark.skipif(CONDA_EXE is not None, reason="a conda executable is installed, so --solver conda-lock runs")
def test_conda_lock_solver_without_executable_refuses_without_downloading(channel, tmp_path):
    env = write_environment_file(tmp_path / "environment.yml", channel, ["click"])
    with pytest.raises(ReprotrainError, match="no conda, mamba or micromamba executable installed") as excinfo:
        lock([env], lockfile=tmp_path / "conda-lock.yml", solver="conda-lock")
    assert excinfo.value.exit_code == 2


@pytest.mark.skipif(CONDA_EXE is None, reason="no conda, mamba or micromamba executable installed "
                                              "(ensureconda with no_install=True found none; none can be installed here)")
def test_conda_lock_executable_path_writes_the_same_format(channel, tmp_path):
    env = write_environment_file(tmp_path / "environment.yml", channel, SPECS)
    result = lock([env], lockfile=tmp_path / "conda-lock.yml", platforms=["linux-64"], solver="conda-lock")
    assert result["solver"].startswith("conda-lock")
    assert check(tmp_path / "conda-lock.yml")["stale"] is False
    ours = tmp_path / "rattler.yml"
    lock([env], lockfile=ours, platforms=["linux-64"], solver="rattler")
    assert read_lockfile(ours).metadata.content_hash == read_lockfile(tmp_path / "conda-lock.yml").metadata.content_hash


PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, platforms, torch_build", [
    ("environment-cpu.yml", ["linux-64", "osx-arm64", "win-64"], "cpu*"),
    ("environment-cuda.yml", ["linux-64", "win-64"], "cuda*"),
])
def test_project_environment_files_parse(name, platforms, torch_build):
    from reprotrain.envlock.solve import declared_platforms, make_spec

    path = PROJECT / "envs" / name
    assert declared_platforms([path]) == platforms
    spec = make_spec([path], platforms)
    assert [c.url for c in spec.channels] == ["conda-forge"]
    for platform in platforms:
        deps = {d.name: d for d in spec.dependencies[platform]}
        assert deps["pytorch"].build == torch_build and "torchvision" in deps and "py-rattler" in deps


@pytest.mark.skipif(not (PROJECT / "conda-lock.yml").exists(),
                    reason="conda-lock.yml is not produced yet: no conda channel is reachable where this project is "
                           "built; run `reprotrain lock -f envs/environment-cpu.yml --lockfile conda-lock.yml`")
def test_project_lock_is_not_stale():
    result = check(PROJECT / "conda-lock.yml")
    assert result["stale"] is False, result["platforms"]
