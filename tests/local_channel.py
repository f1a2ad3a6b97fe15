"""A real local conda channel for tests and benchmarks, built offline in well under a second.

Packages are real `.conda` archives made by py-rattler-build's `assemble_package` and indexed by
rattler's `index_fs`; every archive and every `repodata.json` is byte-reproducible because the build
timestamp is fixed and the index timestamp is normalised to it.

The default channel models a small PyTorch distribution for linux-64, osx-arm64, osx-64 and win-64:

    noarch:   tzdata, click (two versions), cuda-version (12.4)
    per platform: python 3.11.7, numpy 1.26.4, pytorch 2.14.1 (cpu build)
    linux-64, win-64: cudnn 9.1.0.70 and a pytorch 2.14.1 CUDA build that needs `__cuda`

Usage from a test module (``tests/`` is on ``sys.path`` under pytest)::

    from local_channel import local_channel_fixture, write_environment_file
    channel = local_channel_fixture()            # a session-scoped fixture named after the variable

    def test_something(channel, tmp_path):
        channel.install(["pytorch", "click"], tmp_path / "env")   # a real prefix, installed by py-rattler
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PLATFORMS: tuple[str, ...] = ("linux-64", "osx-arm64", "osx-64", "win-64")  # conda-lock's default set
CUDA_PLATFORMS: tuple[str, ...] = ("linux-64", "win-64")
# Fixed so that archives and repodata are byte-for-byte reproducible.
FIXED_TIMESTAMP = _dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=_dt.timezone.utc)

PYTHON_VERSION = "3.11.7"
TORCH_VERSION = "2.14.1"
NUMPY_VERSION = "1.26.4"
CUDA_VERSION = "12.4"
CUDNN_VERSION = "9.1.0.70"


@dataclass(frozen=True)
class PackageSpec:
    """One package to build: its metadata and the files it installs (relative path -> text)."""

    name: str
    version: str
    build: str
    subdir: str  # "noarch" or one of PLATFORMS
    depends: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    noarch: str | None = None  # "generic" or "python" for subdir == "noarch"
    build_number: int = 0

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.conda"


@dataclass(frozen=True)
class BuiltPackage:
    spec: PackageSpec
    path: Path  # the .conda archive inside the channel

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri()

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def md5(self) -> str:
        return hashlib.md5(self.path.read_bytes()).hexdigest()


@dataclass
class LocalChannel:
    """A built and indexed channel directory."""

    path: Path
    packages: list[BuiltPackage]

    @property
    def url(self) -> str:
        """The channel as a `file://` URL, usable in environment files and by rattler."""
        return self.path.resolve().as_uri()

    def archive(self, name: str, subdir: str | None = None, version: str | None = None,
                build: str | None = None) -> BuiltPackage:
        """The single built package matching the filters (raises if none or several match)."""
        found = [p for p in self.packages if p.spec.name == name
                 and (subdir is None or p.spec.subdir == subdir)
                 and (version is None or p.spec.version == version)
                 and (build is None or p.spec.build == build)]
        if len(found) != 1:
            raise LookupError(f"{len(found)} packages match {name} {subdir} {version} {build}")
        return found[0]

    def solve(self, specs: Sequence[str], platform: str = "linux-64",
              virtual_packages: Sequence[str] = ()) -> list:
        """Solve SPECS against this channel only, returning rattler `RepoDataRecord`s."""
        import rattler

        virtual = [rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(version),
                                               rattler.BuildString(build))
                   for name, version, build in (v.split("=") for v in virtual_packages)]
        return asyncio.run(rattler.solve(sources=[self.url], specs=list(specs), platforms=[platform, "noarch"],
                                         virtual_packages=virtual, channel_relations="disabled"))

    def install(self, specs: Sequence[str], prefix: str | Path, platform: str = "linux-64",
                cache_dir: str | Path | None = None, virtual_packages: Sequence[str] = ()) -> list:
        """Solve SPECS and install a real prefix with py-rattler; returns the installed records."""
        import rattler

        records = self.solve(specs, platform, virtual_packages)
        prefix = Path(prefix)
        cache = Path(cache_dir) if cache_dir is not None else prefix.parent / f".{prefix.name}-pkgs"
        asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=cache, show_progress=False,
                                    platform=rattler.Subdir(platform)))
        return records


def _site_packages(platform: str) -> str:
    major_minor = ".".join(PYTHON_VERSION.split(".")[:2])
    return "Lib/site-packages" if platform.startswith("win") else f"lib/python{major_minor}/site-packages"


def default_packages() -> list[PackageSpec]:
    """The small PyTorch-like distribution described in the module docstring."""
    py_pin = "python >=3.11,<3.12.0a0"
    specs = [
        PackageSpec("tzdata", "2024a", "h0_0", "noarch", noarch="generic",
                    files={"share/zoneinfo/UTC": "TZif2 UTC\n"}),
        PackageSpec("click", "8.1.7", "pyh0_0", "noarch", depends=("python >=3.8",), noarch="python",
                    files={"site-packages/click/__init__.py": "__version__ = '8.1.7'\n"}),
        PackageSpec("click", "8.1.8", "pyh0_0", "noarch", depends=("python >=3.8",), noarch="python",
                    files={"site-packages/click/__init__.py": "__version__ = '8.1.8'\n"}),
        PackageSpec("cuda-version", CUDA_VERSION, "h0_0", "noarch", noarch="generic",
                    depends=(), files={"share/cuda-version.txt": f"{CUDA_VERSION}\n"}),
    ]
    for platform in PLATFORMS:
        site = _site_packages(platform)
        bindir = "" if platform.startswith("win") else "bin/"
        exe = ".exe" if platform.startswith("win") else ""
        specs += [
            PackageSpec("python", PYTHON_VERSION, "h0_0_cpython", platform, depends=("tzdata",),
                        files={f"{bindir}python{exe}": f"python {PYTHON_VERSION} for {platform}\n",
                               f"{site}/README.txt": "site-packages\n"}),
            PackageSpec("numpy", NUMPY_VERSION, "py311h0_0", platform, depends=(py_pin,),
                        files={f"{site}/numpy/__init__.py": f"__version__ = '{NUMPY_VERSION}'\n",
                               f"{site}/numpy/core.txt": f"numpy core for {platform}\n"}),
            PackageSpec("pytorch", TORCH_VERSION, "cpu_py311h0_0", platform, depends=(py_pin, "numpy >=1.23"),
                        files={f"{site}/torch/__init__.py": f"__version__ = '{TORCH_VERSION}'\n",
                               f"{site}/torch/lib.txt": f"torch cpu library for {platform}\n"}),
        ]
    for platform in CUDA_PLATFORMS:
        site = _site_packages(platform)
        specs += [
            PackageSpec("cudnn", CUDNN_VERSION, "h0_0", platform, depends=("cuda-version >=12,<13.0a0",),
                        files={"lib/cudnn.txt": f"cudnn {CUDNN_VERSION} for {platform}\n"}),
            # build_number 1 makes the solver prefer it whenever `__cuda` is available, as on conda-forge.
            PackageSpec("pytorch", TORCH_VERSION, "cuda124_py311h0_1", platform, build_number=1,
                        depends=(py_pin, "numpy >=1.23", "__cuda", "cuda-version >=12.4,<12.5.0a0",
                                 "cudnn >=9.1,<10.0a0"),
                        files={f"{site}/torch/__init__.py": f"__version__ = '{TORCH_VERSION}'\n",
                               f"{site}/torch/lib.txt": f"torch cuda library for {platform}\n"}),
        ]
    return specs


def large_packages(count: int = 300, platform: str = "linux-64", files_per_package: int = 4) -> list[PackageSpec]:
    """COUNT independent packages plus `bench-all`, a metapackage depending on all of them (for benchmarks)."""
    names = [f"bench-pkg-{i:03d}" for i in range(count)]
    specs = [PackageSpec(name, "1.0.0", "h0_0", platform,
                         files={f"share/{name}/file{j}.txt": f"{name} file {j}\n" * 20
                                for j in range(files_per_package)})
             for name in names]
    specs.append(PackageSpec("bench-all", "1.0.0", "h0_0", platform, depends=tuple(names)))
    return specs


def build_channel(root: str | Path, packages: Iterable[PackageSpec] | None = None,
                  timestamp: _dt.datetime = FIXED_TIMESTAMP) -> LocalChannel:
    """Build PACKAGES (default: `default_packages()`) into a channel at ROOT and index it."""
    from rattler.index import index_fs
    from rattler_build import assemble_package

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "noarch").mkdir(exist_ok=True)  # conda channels always have noarch, even when empty
    staging = root.parent / f".{root.name}-staging"
    built: list[BuiltPackage] = []
    for spec in (default_packages() if packages is None else packages):
        stage = staging / f"{spec.subdir}-{spec.file_name}"
        stage.mkdir(parents=True, exist_ok=True)
        for rel, text in spec.files.items():
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        out_dir = root / spec.subdir
        out_dir.mkdir(exist_ok=True)
        output = assemble_package(
            name=spec.name, version=spec.version, target_platform=spec.subdir, build_string=spec.build,
            output_dir=str(out_dir), files_dir=str(stage), depends=list(spec.depends),
            build_number=spec.build_number, noarch=spec.noarch, timestamp=timestamp,
            license="Apache-2.0", summary=f"{spec.name} test package", compression_level=1,
            compression_threads=1)
        built.append(BuiltPackage(spec, Path(output.path)))
    shutil.rmtree(staging, ignore_errors=True)
    asyncio.run(index_fs(root, write_zst=False, write_shards=False, force=True))
    _normalise_index_timestamps(root, int(timestamp.timestamp() * 1000))
    return LocalChannel(root, built)


def _normalise_index_timestamps(root: Path, millis: int) -> None:
    # index_fs stamps every record with the time of indexing; pin it so repodata is reproducible.
    for repodata in root.glob("*/repodata.json"):
        doc = json.loads(repodata.read_text())
        for key in ("packages", "packages.conda"):
            for record in doc.get(key, {}).values():
                if "indexed_timestamp" in record:
                    record["indexed_timestamp"] = millis
        repodata.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))


def build_large_channel(root: str | Path, count: int = 300, platform: str = "linux-64") -> LocalChannel:
    """A channel of COUNT packages plus `bench-all`, for the env-verify benchmark."""
    return build_channel(root, large_packages(count, platform))


def write_environment_file(path: str | Path, channel: LocalChannel | str, dependencies: Sequence[str],
                           pip: Sequence[str] = (), name: str = "test-env",
                           platforms: Sequence[str] | None = None) -> Path:
    """Write an environment.yml whose only channel is CHANNEL (its `file://` URL)."""
    import yaml

    url = channel.url if isinstance(channel, LocalChannel) else channel
    deps: list = list(dependencies)
    if pip:
        deps.append({"pip": list(pip)})
    doc: dict = {"name": name, "channels": [url], "dependencies": deps}
    if platforms:
        doc["platforms"] = list(platforms)
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def build_wheel(dist_dir: str | Path, name: str, version: str, module_text: str = "VALUE = 1\n") -> Path:
    """Write a minimal pure-Python wheel (a real one: pip installs it) and return its path."""
    dist_dir = Path(dist_dir)
    dist_dir.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_").lower()
    dist_info = f"{module}-{version}.dist-info"
    contents = {
        f"{module}/__init__.py": module_text,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: reprotrain-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record_lines = []
    for rel, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record_lines.append(f"{rel},sha256={digest},{len(text.encode())}")
    record_lines.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = "\n".join(record_lines) + "\n"
    wheel = dist_dir / f"{module}-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for rel, text in contents.items():
            info = zipfile.ZipInfo(rel, date_time=(2024, 1, 2, 3, 4, 5))
            archive.writestr(info, text)
    wheel.write_bytes(buffer.getvalue())
    return wheel


def local_channel_fixture(packages: Iterable[PackageSpec] | None = None, scope: str = "session"):
    """Make a pytest fixture that builds a channel (default packages unless PACKAGES is given)."""
    frozen = None if packages is None else list(packages)

    @pytest.fixture(scope=scope)
    def _channel(tmp_path_factory) -> LocalChannel:
        return build_channel(tmp_path_factory.mktemp("channel") / "channel", frozen)

    return _channel
