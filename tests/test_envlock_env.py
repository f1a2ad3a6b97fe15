"""`env verify`, `env create` and the fingerprint lock section, against real prefixes installed by py-rattler
from a real local channel built by the tests (tests/local_channel.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from local_channel import (PLATFORMS, PackageSpec, build_channel, build_wheel, default_packages,
                           local_channel_fixture, write_environment_file)

from reprotrain.envlock.create import ArchiveHashMismatch, create_environment
from reprotrain.envlock.fingerprint_section import check_fingerprint_against_lock, lock_section
from reprotrain.envlock.solve import find_conda_executable, lock
from reprotrain.envlock.verify import verify_environment
from reprotrain.errors import ReprotrainError

channel = local_channel_fixture()
CUDA = ["__cuda=12.4=0"]  # what conda-lock's default virtual packages give linux-64 and win-64


def _lock(tmp: Path, channel_or_url, deps, name="conda-lock.yml") -> Path:
    env = write_environment_file(tmp / f"{name}.environment.yml", channel_or_url, deps)
    lock([env], platforms=list(PLATFORMS), lockfile=tmp / name, solver="rattler")
    return tmp / name


@pytest.fixture(scope="session")
def lockfile(channel, tmp_path_factory) -> Path:
    return _lock(tmp_path_factory.mktemp("lock"), channel, ["pytorch", "click"])


@pytest.fixture
def prefix(lockfile, tmp_path) -> Path:
    target = tmp_path / "env"
    report = create_environment(lockfile, target, platform="linux-64", use_conda=False)
    assert report.installer == "rattler" and report.verify.matches, report.verify.differences
    return target


def _kinds(report) -> set[tuple[str, str]]:
    return {(d.kind, d.name) for d in report.differences}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_create_installs_every_platform_and_verify_matches(lockfile, tmp_path, platform):
    report = create_environment(lockfile, tmp_path / "env", platform=platform, use_conda=False)
    assert report.verify.matches and report.verify.platform == platform
    records = {json.loads(p.read_text())["name"]: json.loads(p.read_text())
               for p in (tmp_path / "env" / "conda-meta").glob("*.json")}
    assert {"python", "pytorch", "numpy", "click", "tzdata"} <= set(records)
    assert ("cudnn" in records) == (platform in ("linux-64", "win-64"))  # the CUDA build exists for linux-64 and win-64
    # conda-meta names the locked URL and its hashes, not the staging copy.
    locked = {p["name"]: p for p in yaml.safe_load(lockfile.read_text())["package"] if p["platform"] == platform}
    for name, record in records.items():
        assert record["url"] == locked[name]["url"]
        assert record["md5"] == locked[name]["hash"]["md5"]


def test_verify_cli_match_json_and_human(lockfile, prefix):
    result = run_cli("env", "verify", "--lockfile", str(lockfile), "--prefix", str(prefix), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["matches"] is True and doc["platform"] == "linux-64" and doc["checked"] == 7
    human = run_cli("env", "verify", "--lockfile", str(lockfile), "--prefix", str(prefix), "--deep")
    assert human.returncode == 0 and "matches" in human.stdout and "files re-hashed" in human.stdout


def test_tampered_installed_file_found_only_by_deep(lockfile, prefix):
    target = prefix / "lib/python3.11/site-packages/torch/lib.txt"
    target.unlink()  # replace, not edit in place: the file is a hardlink into the package cache
    target.write_text("patched torch\n")
    (prefix / "lib/python3.11/site-packages/numpy/core.txt").unlink()
    assert verify_environment(lockfile, prefix).matches
    deep = verify_environment(lockfile, prefix, deep=True)
    assert _kinds(deep) == {("file-modified", "pytorch"), ("file-missing", "numpy")}
    assert deep.files_checked >= 10
    result = run_cli("env", "verify", "--lockfile", str(lockfile), "--prefix", str(prefix), "--deep")
    assert result.returncode == 1
    assert "file-modified" in result.stdout and "torch/lib.txt" in result.stdout


def test_missing_and_extra_packages(channel, lockfile, tmp_path):
    # A real prefix solved from a different request: click absent, nothing else extra...
    target = tmp_path / "env"
    channel.install(["pytorch"], target, virtual_packages=CUDA)
    report = verify_environment(lockfile, target)
    assert _kinds(report) == {("missing", "click")}
    # ...and a lock without click sees the click of a fuller prefix as extra.
    fuller = tmp_path / "fuller"
    channel.install(["pytorch", "click"], fuller, virtual_packages=CUDA)
    torch_only = _lock(tmp_path, channel, ["pytorch"], name="torch-only.yml")
    assert _kinds(verify_environment(torch_only, fuller)) == {("extra", "click")}
    result = run_cli("env", "verify", "--lockfile", str(lockfile), "--prefix", str(target), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["differences"][0] == {
        "kind": "missing", "manager": "conda", "name": "click", "locked": "8.1.8 pyh0_0", "installed": None,
        "detail": None}


def test_different_version_and_build(channel, lockfile, tmp_path):
    target = tmp_path / "env"
    # No __cuda: the solver picks the CPU build of pytorch, and click is pinned to the older release.
    channel.install(["pytorch", "click ==8.1.7"], target)
    report = verify_environment(lockfile, target)
    assert _kinds(report) == {("version", "click"), ("build", "pytorch"), ("missing", "cudnn"),
                              ("missing", "cuda-version")}
    build = next(d for d in report.differences if d.kind == "build")
    assert (build.locked, build.installed) == ("cuda124_py311h0_1", "cpu_py311h0_0")


def test_same_name_version_build_with_other_content_is_a_hash_difference(channel, lockfile, tmp_path):
    # Another channel whose click has the locked name, version and build but different bytes.
    impostor_click = PackageSpec("click", "8.1.8", "pyh0_0", "noarch", depends=("python >=3.8",),
                                 noarch="python", files={"site-packages/click/__init__.py": "evil = True\n"})
    specs = [s for s in default_packages() if (s.name, s.version) != ("click", "8.1.8")] + [impostor_click]
    impostor = build_channel(tmp_path / "impostor", specs)
    target = tmp_path / "env"
    impostor.install(["pytorch", "click"], target, virtual_packages=CUDA)
    report = verify_environment(lockfile, target)
    assert _kinds(report) == {("hash", "click")}


def test_tampered_archive_is_refused_before_anything_is_installed(tmp_path):
    copy = build_channel(tmp_path / "channel")
    locked = _lock(tmp_path, copy, ["pytorch", "click"])
    archive = copy.archive("numpy", subdir="linux-64").path
    archive.write_bytes(archive.read_bytes() + b"tampered")
    with pytest.raises(ArchiveHashMismatch, match="numpy 1.26.4 does not match the lock's md5"):
        create_environment(locked, tmp_path / "env", platform="linux-64", use_conda=False)
    assert not (tmp_path / "env" / "conda-meta").exists()
    result = run_cli("env", "create", "--lockfile", str(locked), "--prefix", str(tmp_path / "env2"),
                     "--platform", "linux-64", "--solver", "rattler")
    assert result.returncode == 1
    assert result.stderr.startswith("reprotrain: error: numpy-1.26.4-py311h0_0.conda: archive of numpy")
    assert "Traceback" not in result.stderr


def _add_pip_entry(lockfile: Path, wheel: Path, name: str, version: str, platform: str = "linux-64") -> None:
    doc = yaml.safe_load(lockfile.read_text())
    doc["package"].append({
        "name": name, "version": version, "manager": "pip", "platform": platform,
        "dependencies": {}, "url": wheel.resolve().as_uri(),
        "hash": {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}, "category": "main",
        "optional": False})
    lockfile.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_pip_entries_installed_with_hashes_and_verified(lockfile, tmp_path):
    with_pip = tmp_path / "conda-lock.yml"
    shutil.copyfile(lockfile, with_pip)
    wheel = build_wheel(tmp_path / "wheels", "tiny-pkg", "0.3.1")
    _add_pip_entry(with_pip, wheel, "tiny-pkg", "0.3.1")
    target = tmp_path / "env"
    report = create_environment(with_pip, target, platform="linux-64", use_conda=False)
    assert report.pip_packages == 1 and report.verify.matches, report.verify.differences
    site = target / "lib/python3.11/site-packages"
    assert (site / "tiny_pkg-0.3.1.dist-info" / "METADATA").is_file()
    # The conda lock without the pip entry sees the wheel as extra; a pip-installed file edit is found by --deep.
    assert _kinds(verify_environment(lockfile, target)) == {("extra", "tiny-pkg")}
    module = site / "tiny_pkg" / "__init__.py"
    module.write_text("VALUE = 2\n")
    assert _kinds(verify_environment(with_pip, target, deep=True)) == {("file-modified", "tiny-pkg")}
    shutil.rmtree(site / "tiny_pkg-0.3.1.dist-info")
    assert _kinds(verify_environment(with_pip, target)) == {("missing", "tiny-pkg")}


def test_tampered_wheel_is_refused(lockfile, tmp_path):
    with_pip = tmp_path / "conda-lock.yml"
    shutil.copyfile(lockfile, with_pip)
    wheel = build_wheel(tmp_path / "wheels", "tiny-pkg", "0.3.1")
    _add_pip_entry(with_pip, wheel, "tiny-pkg", "0.3.1")
    build_wheel(tmp_path / "wheels", "tiny-pkg", "0.3.1", module_text="VALUE = 'evil'\n")
    with pytest.raises(ArchiveHashMismatch, match="pip install"):
        create_environment(with_pip, tmp_path / "env", platform="linux-64", use_conda=False)


@pytest.mark.parametrize("case", ["no-lock", "not-a-prefix", "platform-absent", "not-a-lock", "non-empty-prefix"])
def test_bad_input_is_one_line_exit_2(lockfile, prefix, tmp_path, case):
    args = {
        "no-lock": ["env", "verify", "--lockfile", str(tmp_path / "absent.yml"), "--prefix", str(prefix)],
        "not-a-prefix": ["env", "verify", "--lockfile", str(lockfile), "--prefix", str(tmp_path)],
        "platform-absent": ["env", "verify", "--lockfile", str(lockfile), "--prefix", str(prefix),
                            "--platform", "linux-aarch64"],
        "not-a-lock": ["env", "verify", "--lockfile", str(prefix / "conda-meta" / "history"),
                       "--prefix", str(prefix)],
        "non-empty-prefix": ["env", "create", "--lockfile", str(lockfile), "--prefix", str(prefix),
                             "--platform", "linux-64", "--solver", "rattler"],
    }[case]
    result = run_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("reprotrain: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_every_realworld_lock_reads_and_reports_against_a_prefix(realworld, prefix):
    locks = sorted((realworld / "conda-lock").glob("*.yml"))
    assert locks
    for path in locks:
        platforms = yaml.safe_load(path.read_text())["metadata"]["platforms"]
        for platform in platforms:
            report = verify_environment(path, prefix, platform=platform)
            # Our seven test packages are not those projects' environments: every one is a difference.
            assert not report.matches and report.checked > 0
            assert {d.kind for d in report.differences} <= {"missing", "extra", "version", "build", "hash"}


def test_lock_section_names_the_lock_and_whether_the_prefix_matches(lockfile, prefix, tmp_path):
    section = lock_section(str(lockfile), str(prefix))
    doc = yaml.safe_load(lockfile.read_text())
    assert section == {"file": str(lockfile.resolve()), "sha256": hashlib.sha256(lockfile.read_bytes()).hexdigest(),
                       "content_hash": doc["metadata"]["content_hash"]["linux-64"], "platform": "linux-64",
                       "matches": True}
    (prefix / "conda-meta" / "tzdata-2024a-h0_0.json").unlink()
    assert lock_section(str(lockfile), str(prefix))["matches"] is False
    assert lock_section(str(lockfile), str(prefix), verify=False)["matches"] is None
    assert lock_section(str(lockfile), str(tmp_path))["matches"] is None  # not a conda prefix


def _fingerprint(platform="linux-64", python="3.11.7", torch="2.14.1+cu124", cuda="12.4", cudnn=90100):
    return {"python": {"version": python}, "platform": {"conda_subdir": platform},
            "torch": {"version": torch, "cuda": cuda, "cudnn": cudnn}}


def test_checkpoint_fingerprint_against_lock(lockfile):
    rows = check_fingerprint_against_lock(_fingerprint(), str(lockfile))
    assert [r["field"] for r in rows] == ["python.version", "torch.version", "torch.cuda", "torch.cudnn"]
    assert all(r["ok"] for r in rows), rows
    assert rows[3] == {"field": "torch.cudnn", "recorded": "9.1.0", "locked": "9.1.0.70", "ok": True}
    cpu_mac = check_fingerprint_against_lock(_fingerprint("osx-arm64", torch="2.14.1", cuda=None, cudnn=None),
                                             str(lockfile))
    assert all(r["ok"] for r in cpu_mac), cpu_mac
    wrong = check_fingerprint_against_lock(_fingerprint(python="3.12.1", torch="2.13.0+cu124", cudnn="8902"),
                                           str(lockfile))
    assert [r["ok"] for r in wrong] == [False, False, True, False]
    assert wrong[3]["recorded"] == "8.9.2"
    # A CUDA checkpoint against a platform the lock pins for CPU only.
    assert not check_fingerprint_against_lock(_fingerprint("osx-arm64"), str(lockfile))[2]["ok"]
    with pytest.raises(ReprotrainError, match="no platform linux-aarch64"):
        check_fingerprint_against_lock(_fingerprint("linux-aarch64"), str(lockfile))


def test_create_with_conda_lock_executable(lockfile, tmp_path):
    executable = find_conda_executable()
    if executable is None:
        pytest.skip("no conda, mamba or micromamba executable on this machine: the conda-lock install path "
                    "cannot run (reprotrain never downloads one)")
    report = create_environment(lockfile, tmp_path / "env")
    assert report.installer == "conda-lock"


def test_default_packages_cover_three_platforms():
    subdirs = {spec.subdir for spec in default_packages()}
    assert subdirs == {"noarch", *PLATFORMS}
