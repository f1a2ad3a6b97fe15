"""`reprotrain env export` (three formats, --no-builds, --from-history, round trip through `lock`) and conda's
conventions (-p/-n, the lock file as a positional argument), on real prefixes installed by py-rattler from the
tests' local channel."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from local_channel import PLATFORMS, build_wheel, local_channel_fixture, write_environment_file

from reprotrain.envlock.create import create_environment
from reprotrain.envlock.export import export_environment
from reprotrain.envlock.lockfile import load_lock, read_lockfile
from reprotrain.envlock.solve import lock
from reprotrain.envlock.staleness import check
from reprotrain.envlock.verify import verify_environment
from reprotrain.errors import InvalidDocumentError

channel = local_channel_fixture()


@pytest.fixture(scope="module")
def lockfile(channel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock")
    env = write_environment_file(root / "environment.yml", channel, ["pytorch", "click"])
    lock([env], platforms=list(PLATFORMS), lockfile=root / "conda-lock.yml", solver="rattler")
    return root / "conda-lock.yml"


@pytest.fixture(scope="module")
def prefixes(lockfile, tmp_path_factory) -> dict[str, Path]:
    """Every platform's prefix, created from the lock (what the env tests build)."""
    root = tmp_path_factory.mktemp("prefixes")
    built = {}
    for platform in PLATFORMS:
        assert create_environment(lockfile, root / platform, platform=platform, use_conda=False).verify.matches
        built[platform] = root / platform
    return built


def _package_set(path: Path, platform: str, with_build: bool = True) -> set[tuple]:
    return {(p.name, p.version, p.build if with_build else None, p.url) for p in load_lock(path).package
            if p.platform == platform}


@pytest.mark.parametrize("no_builds", [False, True], ids=["with-builds", "no-builds"])
def test_round_trip_create_export_lock_gives_the_same_packages(lockfile, prefixes, tmp_path, no_builds):
    exported = tmp_path / "exported.yml"
    exported.write_text(export_environment(prefixes["linux-64"], no_builds=no_builds))
    doc = yaml.safe_load(exported.read_text())
    assert doc["platforms"] == ["linux-64"] and len(doc["channels"]) == 1
    assert ("pytorch=2.14.1" if no_builds else "pytorch=2.14.1=cuda124_py311h0_1") in doc["dependencies"]
    relocked = tmp_path / "relocked.yml"
    lock([exported], lockfile=relocked, solver="rattler")
    assert _package_set(relocked, "linux-64") == _package_set(lockfile, "linux-64")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_test_prefix_exports_in_all_three_formats(lockfile, prefixes, tmp_path, platform):
    prefix = prefixes[platform]
    environment = yaml.safe_load(export_environment(prefix))
    assert environment["platforms"] == [platform]
    locked = {(p.name, p.version, p.build) for p in load_lock(lockfile).package if p.platform == platform}
    assert {tuple(spec.split("=")) for spec in environment["dependencies"]} == locked
    # explicit: the locked URLs with their md5, which conda-lock.yml readers reject as what it is
    explicit = tmp_path / "explicit.txt"
    explicit.write_text(export_environment(prefix, fmt="explicit"))
    lines = explicit.read_text().splitlines()
    assert f"# platform: {platform}" in lines and "@EXPLICIT" in lines
    urls = {line for line in lines if not line.startswith(("#", "@"))}
    assert urls == {f"{p.url}#{p.hash.md5}" for p in load_lock(lockfile).package if p.platform == platform}
    with pytest.raises(InvalidDocumentError, match="explicit per-platform lock"):
        load_lock(explicit)
    # conda-lock.yml for this one platform: conda-lock's reader takes it and the prefix verifies against it
    unified = tmp_path / "conda-lock.yml"
    unified.write_text(export_environment(prefix, fmt="conda-lock"))
    assert read_lockfile(unified).metadata.platforms == [platform]
    assert _package_set(unified, platform) == _package_set(lockfile, platform)
    assert verify_environment(unified, prefix).matches


def test_exported_conda_lock_is_fresh_against_the_exported_environment_file(prefixes, tmp_path):
    prefix = prefixes["linux-64"]
    (tmp_path / "environment.yml").write_text(export_environment(prefix, name="env"))
    (tmp_path / "conda-lock.yml").write_text(export_environment(prefix, fmt="conda-lock", name="env"))
    report = check(tmp_path / "conda-lock.yml", [tmp_path / "environment.yml"])
    assert not report["stale"], report


def test_from_history_keeps_only_the_requested_specs(channel, lockfile, tmp_path):
    import rattler

    prefix = tmp_path / "env"
    records = channel.solve(["pytorch", "click >=8"], virtual_packages=["__cuda=12.4=0"])
    # py-rattler 0.28 passes requested_specs to its Rust core unwrapped
    asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=tmp_path / "pkgs", show_progress=False,
                                platform=rattler.Subdir("linux-64"),
                                requested_specs=[rattler.MatchSpec(s)._match_spec for s in ("pytorch", "click >=8")]))
    doc = yaml.safe_load(export_environment(prefix, from_history=True))
    assert doc["dependencies"] == ["click >=8", "pytorch"]
    # the requested specs lock to the same environment
    (tmp_path / "requested.yml").write_text(yaml.safe_dump(doc))
    lock([tmp_path / "requested.yml"], lockfile=tmp_path / "relocked.yml", solver="rattler")
    assert _package_set(tmp_path / "relocked.yml", "linux-64") == _package_set(lockfile, "linux-64")
    # conda's own history format (authoritative when present): later actions win, removed specs disappear
    (prefix / "conda-meta" / "history").write_text(
        "==> 2024-01-02 03:04:05 <==\n# cmd: conda install numpy\n# conda version: 24.1.0\n"
        "+file:///c/linux-64::numpy-1.26.4-py311h0_0\n# update specs: ['numpy>=1.20', 'click', 'pytorch']\n"
        "==> 2024-01-03 03:04:05 <==\n# cmd: conda remove click\n# remove specs: ['click']\n")
    doc = yaml.safe_load(export_environment(prefix, from_history=True))
    assert doc["dependencies"] == ["numpy>=1.20", "pytorch"]


def test_pip_packages_are_exported(lockfile, tmp_path):
    with_pip = tmp_path / "conda-lock.yml"
    shutil.copyfile(lockfile, with_pip)
    wheel = build_wheel(tmp_path / "wheels", "tiny-pkg", "0.3.1")
    doc = yaml.safe_load(with_pip.read_text())
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    doc["package"].append({"name": "tiny-pkg", "version": "0.3.1", "manager": "pip", "platform": "linux-64",
                           "dependencies": {}, "url": wheel.resolve().as_uri(), "hash": {"sha256": sha256},
                           "category": "main", "optional": False})
    with_pip.write_text(yaml.safe_dump(doc, sort_keys=False))
    prefix = tmp_path / "env"
    assert create_environment(with_pip, prefix, platform="linux-64", use_conda=False).verify.matches
    environment = yaml.safe_load(export_environment(prefix, no_builds=True))
    assert environment["dependencies"][-1] == {"pip": ["tiny-pkg==0.3.1"]}
    assert f"# pip tiny-pkg @ {wheel.resolve().as_uri()}#sha256={sha256}" in export_environment(prefix, fmt="explicit")
    unified = tmp_path / "exported-lock.yml"
    unified.write_text(export_environment(prefix, fmt="conda-lock"))
    assert verify_environment(unified, prefix).matches
    assert {(p.manager, p.name) for p in load_lock(unified).package if p.manager == "pip"} == {("pip", "tiny-pkg")}


def test_cli_conventions_name_prefix_and_positional_lockfile(lockfile, prefixes, tmp_path):
    envs = tmp_path / "envs"
    conda_env = {"CONDA_ENVS_PATH": str(envs), "CONDA_PREFIX": "", "CONDA_ROOT": str(tmp_path / "root")}
    created = run_cli("env", "create", str(lockfile), "-n", "myenv", "--platform", "linux-64", "--solver", "rattler",
                      env=conda_env)
    assert created.returncode == 0, created.stderr
    assert (envs / "myenv" / "conda-meta").is_dir()
    verified = run_cli("env", "verify", str(lockfile), "-n", "myenv", "--json", env=conda_env)
    assert verified.returncode == 0 and json.loads(verified.stdout)["prefix"] == str((envs / "myenv").resolve())
    # the active environment ($CONDA_PREFIX) is the default, and conda-lock.yml in the working directory
    shutil.copyfile(lockfile, tmp_path / "conda-lock.yml")
    active = run_cli("env", "verify", env={**conda_env, "CONDA_PREFIX": str(envs / "myenv")}, cwd=tmp_path)
    assert active.returncode == 0, active.stderr
    exported = run_cli("env", "export", "-n", "myenv", "--no-builds", env=conda_env)
    assert exported.returncode == 0 and "pytorch=2.14.1" in exported.stdout
    out = tmp_path / "out.yml"
    assert run_cli("env", "export", "-p", str(prefixes["win-64"]), "--format", "conda-lock", "-f", str(out)).returncode == 0
    assert load_lock(out).metadata.platforms == ["win-64"]
    for args, message in [(["env", "verify", str(lockfile), "-n", "nosuchenv"], "no environment named nosuchenv"),
                          (["env", "verify", str(lockfile), "-n", "x", "-p", str(tmp_path)], "not both"),
                          (["env", "export", "-p", str(tmp_path)], "not a conda environment"),
                          (["env", "export", "-n", "myenv", "--format", "explicit", "--no-builds"], "environment only")]:
        result = run_cli(*args, env=conda_env)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
