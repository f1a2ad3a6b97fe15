"""Collect the fingerprint of the running environment.

Two sources, chosen per section and recorded in ``doc["sources"]``:

* ``runtime``: the process already imported torch (a training process), so its live values are
  read (determinism switches, CUDA devices, cuDNN as loaded).
* ``static``: torch was not imported (the CLI), and importing it would cost seconds, so versions
  come from torch's own ``version.py`` read as text, the installed distributions, conda-meta
  and NVML (no subprocess such as nvidia-smi).

Only a fixed allow-list of environment variables is read (CONDA_PREFIX, CUBLAS_WORKSPACE_CONFIG,
PYTHONHASHSEED, and CUDA_VISIBLE_DEVICES to pick the devices NVML describes); nothing else from the
environment reaches the document.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform as _platform
import re
import socket
import subprocess
import sys

from reprotrain.envlock.prefix import conda_subdir
from reprotrain.fingerprint import packages as _packages
from reprotrain.fingerprint.document import SCHEMA_VERSION, empty_lock_section, validate

_VERSION_ASSIGNMENT = re.compile(r"^(\w+)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)
_GIT_TIMEOUT_S = 5.0
_TORCH_DETERMINISM_FIELDS = ("cudnn_deterministic", "cudnn_benchmark", "deterministic_algorithms",
                             "deterministic_algorithms_warn_only", "tf32_matmul", "tf32_cudnn",
                             "float32_matmul_precision")


def _libc() -> tuple[str | None, str | None]:
    try:
        # glibc answers instantly; platform.libc_ver() would scan the interpreter binary.
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        value = None
    if value and " " in value:
        name, version = value.split(" ", 1)
        return name, version
    if sys.platform.startswith("linux"):
        name, version = _platform.libc_ver()
        return (name or None), (version or None)
    return None, None


def _python_section() -> dict:
    return {"version": _platform.python_version(), "implementation": _platform.python_implementation()}


def _platform_section() -> dict:
    libc, libc_version = _libc()
    return {"os": _platform.system() or None, "machine": _platform.machine() or None,
            "conda_subdir": conda_subdir(), "libc": libc, "libc_version": libc_version}


def normalise_cudnn(value) -> str | None:
    """cuDNN as "major.minor.patch" from torch's integer (8902, 90100) or a package version ("9.1.0.70")."""
    if value is None:
        return None
    if isinstance(value, int):
        # cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN 8 used major*1000 + minor*100 + patch.
        major, rest = (value // 10000, value % 10000) if value >= 10000 else (value // 1000, value % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    parts = str(value).split(".")
    return ".".join((parts + ["0", "0"])[:3])


def _read_torch_version_file() -> dict | None:
    import importlib.util

    spec = importlib.util.find_spec("torch")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    import ast

    values = {}
    for name, expr in _VERSION_ASSIGNMENT.findall(text):
        try:
            values[name] = ast.literal_eval(expr)
        except (ValueError, SyntaxError):
            continue
    return values


def _find_version(pip: list[dict], conda: list[dict], pip_names: tuple[str, ...], conda_names: tuple[str, ...],
                  pip_prefix: str | None = None) -> str | None:
    for dist in pip:
        if dist["name"] in pip_names or (pip_prefix and dist["name"].startswith(pip_prefix)):
            return dist["version"]
    for record in conda:
        if record["name"] in conda_names:
            return record["version"]
    return None


def _torch_section(runtime: bool, pip: list[dict], conda: list[dict]) -> dict:
    cudnn_static = _find_version(pip, conda, (), ("cudnn",), pip_prefix="nvidia-cudnn-cu")
    if runtime:
        import torch

        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {"version": str(torch.__version__), "git_version": getattr(torch.version, "git_version", None),
                "debug": bool(getattr(torch.version, "debug", False)), "cuda": torch.version.cuda,
                "cudnn": normalise_cudnn(cudnn) if torch.version.cuda else None,
                "hip": getattr(torch.version, "hip", None)}
    values = _read_torch_version_file()
    if values is None:
        return {"version": None, "git_version": None, "debug": None, "cuda": None, "cudnn": None, "hip": None}
    cuda = values.get("cuda")
    return {"version": values.get("__version__"), "git_version": values.get("git_version"),
            "debug": values.get("debug"), "cuda": cuda,
            "cudnn": normalise_cudnn(cudnn_static) if cuda else None, "hip": values.get("hip")}


def _libraries_section(pip: list[dict], conda: list[dict]) -> tuple[dict, str]:
    versions, runtime = {}, True
    for module, pip_name, conda_name in (("torchvision", "torchvision", "torchvision"), ("numpy", "numpy", "numpy")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
            versions[module] = loaded.__version__
        else:
            runtime = False
            versions[module] = _find_version(pip, conda, (pip_name,), (conda_name,))
    return versions, "runtime" if runtime else "static"


def visible_device_indices(spec: str | None, uuids: list[str]) -> list[int] | None:
    """The NVML indices CUDA exposes under CUDA_VISIBLE_DEVICES=SPEC, in CUDA's order (None: cannot tell).

    CUDA reads the list up to its first invalid or repeated entry; an entry is an index or a unique
    prefix of a `GPU-` UUID. MIG instances are not NVML devices, so a `MIG-` entry means "unknown".
    """
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (part.strip() for part in spec.split(",")):
        if entry.startswith("MIG-"):
            return None
        if entry.isdigit():
            index = int(entry) if int(entry) < len(uuids) else None
        elif entry.startswith("GPU-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
            index = matches[0] if len(matches) == 1 else None
        else:
            index = None
        if index is None or index in chosen:
            break
        chosen.append(index)
    return chosen


def _nvml_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvml_accelerators(visible: str | None) -> dict | None:
    """Devices and driver via NVML bindings, without creating a CUDA context; None when NVML cannot tell."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        # No NVIDIA driver on this machine: no CUDA device can be used.
        return {"cuda_available": False, "device_count": 0, "driver_version": None, "devices": []}
    try:
        driver = _nvml_text(pynvml.nvmlSystemGetDriverVersion())
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        indices = visible_device_indices(visible, [_nvml_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles])
        if indices is None:
            return None
        devices = []
        for cuda_index, nvml_index in enumerate(indices):
            handle = handles[nvml_index]
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            devices.append({"index": cuda_index, "name": _nvml_text(pynvml.nvmlDeviceGetName(handle)),
                            "compute_capability": f"{major}.{minor}",
                            "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)})
        return {"cuda_available": bool(devices), "device_count": len(devices), "driver_version": driver,
                "devices": devices}
    except pynvml.NVMLError:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _accelerators_section(runtime: bool, torch_section: dict, visible: str | None) -> dict:
    unknown = {"cuda_available": None, "device_count": None, "driver_version": None, "devices": None}
    no_cuda = {"cuda_available": False, "device_count": 0, "driver_version": None, "devices": []}
    if not runtime:
        if torch_section["hip"]:
            return unknown  # ROCm devices are not visible to NVML
        if not torch_section["cuda"]:
            return no_cuda  # a CPU-only torch (or none) uses no GPU, as torch.cuda.is_available() would say
        return _nvml_accelerators(visible) or unknown
    import torch

    if not torch.cuda.is_available():
        return no_cuda
    nvml = _nvml_accelerators(visible) if torch.version.cuda else None
    count = torch.cuda.device_count()
    if torch.cuda.is_initialized() or nvml is None or nvml["device_count"] != count:
        # NVML describes the devices without creating a CUDA context; once CUDA is initialised (or if the
        # two disagree on the count, e.g. CUDA_DEVICE_ORDER) torch's own view is cheaper and authoritative.
        devices = []
        for index in range(count):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                            "memory_bytes": int(props.total_memory)})
    else:
        devices = nvml["devices"]
    return {"cuda_available": True, "device_count": count,
            "driver_version": nvml["driver_version"] if nvml else None, "devices": devices}


def _determinism_section(runtime: bool, env: dict) -> dict:
    section = {field: None for field in _TORCH_DETERMINISM_FIELDS}
    if runtime:
        import torch

        section.update({
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "deterministic_algorithms_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        })
    section["cublas_workspace_config"] = env.get("CUBLAS_WORKSPACE_CONFIG")
    section["pythonhashseed"] = env.get("PYTHONHASHSEED")
    return section


def default_code_dir() -> str:
    """The directory of the running script (sys.argv[0]) when it is a file, else the working directory."""
    script = sys.argv[0] if sys.argv else ""
    if script and os.path.isfile(script):
        return os.path.dirname(os.path.abspath(script))
    return os.getcwd()


def _enclosing_worktree(directory: str) -> str | None:
    """The nearest directory at or above DIRECTORY holding `.git` (a directory, or a file for worktrees and
    submodules), as git finds it; found without a second git process, which would double the cost."""
    current = os.path.realpath(directory)
    while True:
        if os.path.exists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _code_section(code_dir: str) -> dict:
    none = {"repository": None, "git_commit": None, "git_dirty": None}
    try:
        # One `git status` gives the commit and the dirty flag. Untracked files are not scanned (a data
        # directory inside the repository would make this slow); GIT_OPTIONAL_LOCKS=0 keeps git from
        # taking the index lock in a checkout other processes are using.
        result = subprocess.run(
            ["git", "-C", code_dir, "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return none
    if result.returncode != 0:
        return none
    commit, dirty = None, False
    for line in result.stdout.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2].strip()
            commit = None if oid == "(initial)" else oid
        elif line and not line.startswith("#"):
            dirty = True
    repository = _enclosing_worktree(code_dir)
    if repository is None:  # GIT_DIR/GIT_WORK_TREE or another unusual layout: ask git
        try:
            toplevel = subprocess.run(["git", "-C", code_dir, "rev-parse", "--show-toplevel"], capture_output=True,
                                      text=True, timeout=_GIT_TIMEOUT_S,
                                      env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        except (OSError, subprocess.SubprocessError):
            return none
        repository = toplevel.stdout.strip() or None if toplevel.returncode == 0 else None
    return {"repository": repository, "git_commit": commit, "git_dirty": dirty}


def collect(*, lock_section: dict | None = None, code_dir: str | None = None, full: bool = False) -> dict:
    """The validated fingerprint of this process's environment (see docs/fingerprint.md).

    torch is consulted at runtime only if this process already imported it; otherwise its
    versions are read from disk. ``full`` adds every conda package and Python distribution.
    """
    # The allow-list of environment variables read; CUDA_VISIBLE_DEVICES only selects devices, it is not recorded.
    env = {name: os.environ.get(name)
           for name in ("CONDA_PREFIX", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "CUDA_VISIBLE_DEVICES")}
    runtime = "torch" in sys.modules
    runtime_label = "runtime" if runtime else "static"

    prefix = _packages.find_conda_prefix(env["CONDA_PREFIX"])
    conda = _packages.conda_packages(prefix)
    pip = _packages.python_distributions()
    torch_section = _torch_section(runtime, pip, conda)
    libraries, libraries_source = _libraries_section(pip, conda)
    accelerators = _accelerators_section(runtime, torch_section, env["CUDA_VISIBLE_DEVICES"])

    packages_section = {
        "conda": {"prefix": prefix, "count": len(conda) if prefix else None,
                  "digest": _packages.inventory_digest(conda, ("name", "version", "build", "hash")) if prefix else None},
        "pip": {"count": len(pip), "digest": _packages.inventory_digest(pip, ("name", "version"))},
    }
    if full:
        packages_section["conda"]["packages"] = conda if prefix else None
        packages_section["pip"]["packages"] = pip

    lock = empty_lock_section()
    lock.update(lock_section or {})

    doc = {
        "schema_version": SCHEMA_VERSION,
        "collected_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "sources": {"python": "runtime", "platform": "runtime", "torch": runtime_label,
                    "libraries": libraries_source, "accelerators": runtime_label, "determinism": runtime_label,
                    "packages": "static", "lock": "static", "code": "static", "host": "runtime"},
        "python": _python_section(),
        "platform": _platform_section(),
        "torch": torch_section,
        "libraries": libraries,
        "accelerators": accelerators,
        "determinism": _determinism_section(runtime, env),
        "packages": packages_section,
        "lock": lock,
        "code": _code_section(code_dir or default_code_dir()),
        "host": {"name": socket.gethostname() or None},
    }
    return validate(doc, source="<collected fingerprint>")
