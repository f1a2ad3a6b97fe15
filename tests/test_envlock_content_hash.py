"""conda-lock's content hash reproduced without conda-lock (reprotrain/envlock/content_hash.py): equal to
conda-lock's own on every environment file it takes, declined (None) on the rest, and `lock --check` as a
process that never imports conda-lock's package when the lock is fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REALWORLD
from local_channel import local_channel_fixture, write_environment_file

from reprotrain.envlock import content_hash
from reprotrain.envlock.solve import lock

channel = local_channel_fixture()
PROJECT = Path(__file__).resolve().parents[1]
PLATFORMS = ["linux-64", "osx-arm64", "osx-64", "win-64", "linux-aarch64"]


def _conda_lock(path: Path, platforms=PLATFORMS):
    from conda_lock.content_hash import backwards_compatible_content_hashes, compute_content_hashes

    from reprotrain.envlock.solve import make_spec, virtual_packages

    spec, repo = make_spec([path], platforms), virtual_packages(None)
    return compute_content_hashes(spec, repo), {p: backwards_compatible_content_hashes(spec, repo, p)
                                                for p in platforms}


def _environment_files() -> list[Path]:
    files = sorted((PROJECT / "envs").glob("*.yml"))
    if REALWORLD.is_dir():
        files += sorted(p for p in (REALWORLD / "environment-yml").iterdir() if p.suffix in (".yml", ".yaml"))
    return files


@pytest.mark.parametrize("path", _environment_files(), ids=lambda p: p.name)
def test_equal_to_conda_locks_hash_or_declined(path):
    fast = content_hash.hashes([path], PLATFORMS)
    if path.parent.name == "envs":
        assert fast is not None  # the project's own files take the fast path
    if fast is None:
        return
    assert fast == _conda_lock(path)


SPECS = ["python 3.11.*", "pytorch >=2.1 cpu*", "numpy", "python=3.11", "python==3.11.7", "python>=3.10,<3.12",
         "numpy 1.26.4 py311h0_0", "click=8.1.8=pyh0_0", "pytorch::pytorch", "pytorch::pytorch >=2", "cudatoolkit=11.8",
         "python 3.11", "numpy >=1.23,<2", "python=3.11.*", "libblas=*=*mkl", "numpy!=1.0", "numpy~=1.2",
         "numpy 1.2|1.3", "Numpy", "numpy 1.2.*", "numpy >=1.0a0", "numpy 2.0.0rc1", "python >=3.10,<3.12.0a0",
         "numpy *", "numpy * py*", "numpy=1.26.4=*", "numpy >= 1.23", "numpy=1.2+3", "numpy[version='>=1']",
         "conda-forge/label/x::numpy", "numpy==1.*", "numpy 1.2 *cuda* extra", "numpy <2", "numpy>=1.23|<0.5"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("channels", [["conda-forge"], ["pytorch", "nvidia", "conda-forge", "nodefaults"],
                                      ["file:///srv/channel"], ["https://user:secret@host.example/channel"]],
                         ids=["conda-forge", "several", "file-url", "credentials"])
def test_spec_forms(tmp_path, spec, channels):
    path = tmp_path / "environment.yml"
    path.write_text(yaml.safe_dump({"name": "x", "channels": channels, "dependencies": ["python 3.11.*", spec]}))
    fast = content_hash.hashes([path], PLATFORMS)
    if "@" in channels[0]:
        assert fast is None  # credentials become env-var references in conda-lock: its job
    if fast is not None:
        assert fast == _conda_lock(path)


@pytest.mark.parametrize("doc", [
    {"channels": ["conda-forge"], "dependencies": ["numpy", {"pip": ["requests"]}]},
    {"channels": ["conda-forge"], "dependencies": ["numpy"], "category": "dev"},
    {"channels": ["conda-forge"], "dependencies": ["numpy"], "pip-repositories": ["https://pypi.org/simple"]},
])
def test_declines_what_it_does_not_reproduce(tmp_path, doc):
    path = tmp_path / "environment.yml"
    path.write_text(yaml.safe_dump(doc))
    assert content_hash.hashes([path], PLATFORMS) is None
    selectors = tmp_path / "selectors.yml"
    selectors.write_text("channels: [conda-forge]\ndependencies:\n  - numpy  # [linux]\n")
    assert content_hash.hashes([selectors], PLATFORMS) is None


def test_lock_check_process_never_imports_conda_lock_when_fresh(channel, tmp_path):
    env = write_environment_file(tmp_path / "environment.yml", channel, ["python 3.11.*", "pytorch", "click"])
    lock([env], lockfile=tmp_path / "conda-lock.yml", solver="rattler")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "reprotrain", "lock", "--check"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "reprotrain.envlock.content_hash" in modules
    assert not {m for m in modules if m.split(".")[0] in ("conda_lock", "pydantic", "torch")}
    # a stale lock still gets conda-lock's diagnosis
    env.write_text(env.read_text().replace("python 3.11.*", "python 3.12.*"))
    stale = subprocess.run([sys.executable, "-m", "reprotrain", "lock", "--check"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert stale.returncode == 1 and "python: locked 3.11.7 does not satisfy 3.12.*" in stale.stdout


def test_vendored_virtual_packages_are_conda_locks_defaults():
    import json

    from conda_lock.virtual_package import default_virtual_package_repodata

    vendored = json.loads(content_hash.VIRTUAL_PACKAGES.read_text())
    assert vendored == json.loads(json.dumps(default_virtual_package_repodata().all_repodata))
