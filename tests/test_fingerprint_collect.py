"""Collecting the fingerprint from real sources: a conda prefix installed by py-rattler, installed wheels,
real git repositories, torch's runtime switches in a real process, and a machine without a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from local_channel import PackageSpec, build_channel
from reprotrain import fingerprint as fp
from reprotrain.errors import InvalidDocumentError
from reprotrain.fingerprint import packages as pk

SITE = "lib/python3.11/site-packages"
CPU_TORCH_VERSION_PY = textwrap.dedent("""\
    from typing import Optional

    __all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']
    __version__ = '2.14.1+cpu'
    debug = False
    cuda: Optional[str] = None
    git_version = '0123456789abcdef0123456789abcdef01234567'
    hip: Optional[str] = None
    """)


@pytest.fixture(scope="module")
def cpu_prefix(tmp_path_factory):
    """A real conda prefix with a CPU-only torch layout, built by py-rattler-build and installed by py-rattler."""
    root = tmp_path_factory.mktemp("fp-channel")
    specs = [
        PackageSpec("pytorch", "2.14.1", "cpu_py311h0_0", "linux-64", depends=("numpy",),
                    files={f"{SITE}/torch/__init__.py": "raise ImportError('static collection must not import')\n",
                           f"{SITE}/torch/version.py": CPU_TORCH_VERSION_PY}),
        PackageSpec("numpy", "1.26.4", "py311h0_0", "linux-64", files={f"{SITE}/numpy/__init__.py": ""}),
        PackageSpec("tzdata", "2024a", "h0_0", "noarch", noarch="generic", files={"share/zoneinfo/UTC": "TZif2\n"}),
    ]
    channel = build_channel(root / "channel", specs)
    prefix = root / "env"
    records = channel.install(["pytorch", "tzdata"], prefix)
    return prefix, channel, records


def _collect_in_subprocess(code: str, env: dict | None = None, cwd=None) -> dict:
    script = code + "\nimport json, sys\nprint(json.dumps({'doc': doc, 'torch_imported': 'torch' in sys.modules}))\n"
    full_env = {k: v for k, v in os.environ.items() if k not in ("CONDA_PREFIX", "PYTHONPATH")}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full_env, cwd=cwd,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_conda_prefix_records_match_what_rattler_installed(cpu_prefix):
    prefix, channel, records = cpu_prefix
    collected = pk.conda_packages(pk.find_conda_prefix(str(prefix)))
    expected = sorted((r.name.normalized, str(r.version), str(r.build), f"sha256:{r.sha256.hex()}") for r in records)
    assert [(c["name"], c["version"], c["build"], c["hash"]) for c in collected] == expected
    for record in collected:
        assert record["hash"] == "sha256:" + channel.archive(record["name"]).sha256()


def test_fast_conda_meta_reader_agrees_with_a_full_parse_in_every_layout(cpu_prefix, tmp_path):
    prefix, _, _ = cpu_prefix
    for path in (prefix / "conda-meta").glob("*.json"):
        full = json.loads(path.read_text())
        expected = {"name": full["name"], "version": full["version"], "build": full["build"],
                    "hash": f"sha256:{full['sha256']}"}
        assert pk.read_conda_record(str(path)) == expected
        # conda itself writes sorted keys (sha256 after the long paths_data); others may write minified JSON
        sorted_copy = tmp_path / f"sorted-{path.name}"
        sorted_copy.write_text(json.dumps(full, indent=2, sort_keys=True))
        minified = tmp_path / f"min-{path.name}"
        minified.write_text(json.dumps(full, separators=(",", ":")))
        md5_only = tmp_path / f"md5-{path.name}"
        md5_only.write_text(json.dumps({k: v for k, v in full.items() if k != "sha256"}, indent=2))
        assert pk.read_conda_record(str(sorted_copy)) == expected
        assert pk.read_conda_record(str(minified)) == expected
        assert pk.read_conda_record(str(md5_only))["hash"] == f"md5:{full['md5']}"


def test_broken_conda_meta_record_names_the_file(cpu_prefix, tmp_path):
    prefix, _, _ = cpu_prefix
    broken = tmp_path / "broken"
    shutil.copytree(prefix / "conda-meta", broken / "conda-meta")
    (broken / "conda-meta" / "half-1.0-0.json").write_text('{\n  "name": "half",\n  "vers')
    with pytest.raises(InvalidDocumentError, match=r"half-1.0-0.json: unreadable conda-meta record"):
        pk.conda_packages(str(broken))


def test_cpu_only_static_fingerprint_has_cuda_fields_present_and_null(cpu_prefix, tmp_path):
    prefix, _, records = cpu_prefix
    result = _collect_in_subprocess(
        "from reprotrain import fingerprint as fp\ndoc = fp.collect(full=True)",
        env={"CONDA_PREFIX": str(prefix), "PYTHONPATH": str(prefix / SITE)}, cwd=tmp_path)
    doc = result["doc"]
    assert result["torch_imported"] is False  # our fake torch/__init__.py would have raised
    fp.validate(doc)
    assert doc["sources"]["torch"] == doc["sources"]["accelerators"] == doc["sources"]["determinism"] == "static"
    assert doc["torch"] == {"version": "2.14.1+cpu", "git_version": "0123456789abcdef0123456789abcdef01234567",
                            "debug": False, "cuda": None, "cudnn": None, "hip": None}
    assert doc["accelerators"] == {"cuda_available": False, "device_count": 0, "driver_version": None,
                                   "devices": []}
    assert doc["determinism"]["cudnn_deterministic"] is None
    conda = doc["packages"]["conda"]
    assert conda["prefix"] == str(prefix) and conda["count"] == len(records) == 3
    assert [p["name"] for p in conda["packages"]] == ["numpy", "pytorch", "tzdata"]
    assert conda["digest"] == pk.inventory_digest(conda["packages"], ("name", "version", "build", "hash"))
    assert doc["code"] == {"repository": None, "git_commit": None, "git_dirty": None}  # tmp_path: no repository


def test_cpu_only_runtime_fingerprint_in_a_training_process():
    result = _collect_in_subprocess(textwrap.dedent("""\
        import torch
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = True
        torch.set_float32_matmul_precision("high")  # "high" also turns TF32 matmul on
        from reprotrain import fingerprint as fp
        doc = fp.collect()
        """), env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONHASHSEED": "0",
                   "REPROTRAIN_TEST_SECRET": "hunter2-do-not-record"})
    doc = result["doc"]
    assert doc["sources"]["torch"] == doc["sources"]["determinism"] == doc["sources"]["accelerators"] == "runtime"
    assert doc["torch"]["version"] is not None
    if not doc["accelerators"]["cuda_available"]:  # this test machine has no GPU: the CPU-only case
        assert doc["accelerators"] == {"cuda_available": False, "device_count": 0, "driver_version": None,
                                       "devices": []}
    assert doc["determinism"] == {
        "cudnn_deterministic": True, "cudnn_benchmark": True, "deterministic_algorithms": True,
        "deterministic_algorithms_warn_only": True, "tf32_matmul": True, "tf32_cudnn": True,
        "float32_matmul_precision": "high", "cublas_workspace_config": ":4096:8", "pythonhashseed": "0"}
    assert "hunter2" not in json.dumps(doc)


def test_static_and_runtime_agree_on_versions():
    static = _collect_in_subprocess("from reprotrain import fingerprint as fp\ndoc = fp.collect()")
    assert static["torch_imported"] is False
    static = static["doc"]
    runtime = _collect_in_subprocess("import torch\nfrom reprotrain import fingerprint as fp\ndoc = fp.collect()")["doc"]
    for section in ("torch", "libraries"):
        assert static[section] == runtime[section], section
    diffs = fp.compare(runtime, static)
    assert not diffs.refused and {d.severity for d in diffs.differences} <= {"info", "warn"}


def test_lock_section_defaults_to_nulls_and_takes_what_it_is_given(tmp_path):
    assert fp.collect(code_dir=str(tmp_path))["lock"] == {"file": None, "sha256": None, "content_hash": None,
                                                         "platform": None, "matches": None}
    doc = fp.collect(code_dir=str(tmp_path), lock_section={"file": "conda-lock.yml", "matches": True})
    assert doc["lock"] == {"file": "conda-lock.yml", "sha256": None, "content_hash": None, "platform": None,
                           "matches": True}
    with pytest.raises(InvalidDocumentError, match="lock.matches"):
        fp.collect(code_dir=str(tmp_path), lock_section={"matches": "yes"})


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"})


def test_code_section_follows_a_real_repository(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("print('v1')\n")
    assert fp.collect(code_dir=str(repo))["code"] == {"repository": str(repo), "git_commit": None, "git_dirty": False}
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "v1")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "notes.txt").write_text("untracked files do not make the code dirty\n")
    (repo / "sub").mkdir()
    assert fp.collect(code_dir=str(repo / "sub"))["code"] == {"repository": str(repo), "git_commit": head,
                                                             "git_dirty": False}
    (repo / "train.py").write_text("print('v2')\n")
    assert fp.collect(code_dir=str(repo))["code"]["git_dirty"] is True


def test_code_section_without_git_or_without_a_repository(tmp_path, monkeypatch):
    nulls = {"repository": None, "git_commit": None, "git_dirty": None}
    assert fp.collect(code_dir=str(tmp_path))["code"] == nulls
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert fp.collect(code_dir=os.getcwd())["code"] == nulls


def test_python_distributions_from_real_wheel_installs(tmp_path):
    from local_channel import build_wheel

    wheels = [build_wheel(tmp_path / "dist", "Demo.Pkg_one", "1.2.3"), build_wheel(tmp_path / "dist", "other", "0.1")]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "-q", "--target",
                    str(target), *map(str, wheels)], check=True, capture_output=True, timeout=120)
    legacy = target / "legacy_tool.egg-info"  # an old `setup.py develop` leaves no version in the folder name
    legacy.mkdir()
    (legacy / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: Legacy-Tool\nVersion: 4.5\n\nbody\n")
    assert pk.python_distributions([str(target)]) == [
        {"name": "demo-pkg-one", "version": "1.2.3"}, {"name": "legacy-tool", "version": "4.5"},
        {"name": "other", "version": "0.1"}]


def test_live_pip_inventory_matches_importlib_metadata():
    import importlib.metadata as md

    expected = {}
    for directory in pk.site_packages_dirs():
        for dist in md.distributions(path=[directory]):
            expected.setdefault(pk.normalise_name(dist.metadata["Name"]), dist.version)
    assert {d["name"]: d["version"] for d in pk.python_distributions()} == expected


@pytest.mark.parametrize("system, machine, subdir", [
    ("Linux", "x86_64", "linux-64"), ("Linux", "aarch64", "linux-aarch64"), ("Linux", "ppc64le", "linux-ppc64le"),
    ("Darwin", "arm64", "osx-arm64"), ("Darwin", "x86_64", "osx-64"), ("Windows", "AMD64", "win-64"),
    ("Windows", "ARM64", "win-arm64"), ("Plan9", "x86_64", None),
])
def test_conda_subdir(system, machine, subdir):
    from reprotrain.fingerprint.collect import conda_subdir

    assert conda_subdir(system, machine) == subdir


@pytest.mark.parametrize("value, expected", [(8902, "8.9.2"), (90100, "9.1.0"), (92400, "9.24.0"),
                                             ("9.1.0.70", "9.1.0"), ("9", "9.0.0"), (None, None)])
def test_cudnn_versions_from_torch_and_from_packages_normalise_alike(value, expected):
    from reprotrain.fingerprint.collect import normalise_cudnn

    assert normalise_cudnn(value) == expected


UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-bbbb3333-0000"]


@pytest.mark.parametrize("spec, expected", [
    (None, [0, 1, 2]),                       # unset: every device, in NVML order
    ("", []),                                # set but empty: no device
    ("2,0", [2, 0]),                         # CUDA renumbers in the order given
    ("1,7,0", [1]),                          # CUDA stops at the first invalid entry
    ("0,0,1", [0]),                          # ... and at a repeated one
    ("-1", []),
    ("GPU-aaaa,GPU-bbbb3", [0, 2]),          # unique UUID prefixes
    ("GPU-bbbb", []),                        # an ambiguous prefix is invalid
    (" 1 , 2 ", [1, 2]),
    ("MIG-0f2c5b36-1111", None),             # MIG instances are not NVML devices: unknown
])
def test_cuda_visible_devices_select_nvml_devices_as_cuda_does(spec, expected):
    from reprotrain.fingerprint.collect import visible_device_indices

    assert visible_device_indices(spec, UUIDS) == expected


@pytest.mark.parametrize("cuda, hip, accelerators", [
    (None, "6.2.41133", {"cuda_available": None, "device_count": None, "driver_version": None, "devices": None}),
    (None, None, {"cuda_available": False, "device_count": 0, "driver_version": None, "devices": []}),
])
def test_static_accelerators_follow_the_torch_build(tmp_path, cuda, hip, accelerators):
    # A ROCm build's GPUs are invisible to NVML, so a static fingerprint says "unknown" rather than
    # "no GPU"; a CPU-only build uses no GPU whatever NVML sees, as torch.cuda.is_available() would say.
    torch_dir = tmp_path / "site" / "torch"
    torch_dir.mkdir(parents=True)
    (torch_dir / "__init__.py").write_text("raise ImportError('static collection must not import torch')\n")
    (torch_dir / "version.py").write_text(f"__version__ = '2.14.1'\ncuda = {cuda!r}\nhip = {hip!r}\n"
                                          "git_version = 'unknown'\ndebug = False\n")
    result = _collect_in_subprocess("from reprotrain import fingerprint as fp\ndoc = fp.collect()",
                                    env={"PYTHONPATH": str(tmp_path / "site")}, cwd=tmp_path)
    assert result["torch_imported"] is False
    assert result["doc"]["torch"]["hip"] == hip
    assert result["doc"]["accelerators"] == accelerators
