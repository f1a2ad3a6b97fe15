"""A complete, valid fingerprint of a CUDA training process, for the fingerprint tests to vary field by field."""

from __future__ import annotations

import copy

_RUNTIME_GPU_DOC = {
    "schema_version": 1,
    "collected_at": "2026-01-02T03:04:05Z",
    "sources": {"python": "runtime", "platform": "runtime", "torch": "runtime", "libraries": "runtime",
                "accelerators": "runtime", "determinism": "runtime", "packages": "static", "lock": "static",
                "code": "static", "host": "runtime"},
    "python": {"version": "3.11.7", "implementation": "CPython"},
    "platform": {"os": "Linux", "machine": "x86_64", "conda_subdir": "linux-64", "libc": "glibc",
                 "libc_version": "2.35"},
    "torch": {"version": "2.14.1+cu124", "git_version": "5c4886908584029761b579af026dcfb627c84070", "debug": False,
              "cuda": "12.4", "cudnn": "9.1.0", "hip": None},
    "libraries": {"torchvision": "0.29.1", "numpy": "1.26.4"},
    "accelerators": {"cuda_available": True, "device_count": 1, "driver_version": "550.54.15",
                     "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                  "memory_bytes": 85045870592}]},
    "determinism": {"cudnn_deterministic": True, "cudnn_benchmark": False, "deterministic_algorithms": True,
                    "deterministic_algorithms_warn_only": False, "tf32_matmul": False, "tf32_cudnn": True,
                    "float32_matmul_precision": "highest", "cublas_workspace_config": ":4096:8",
                    "pythonhashseed": "0"},
    "packages": {"conda": {"prefix": "/opt/envs/train", "count": 212, "digest": "sha256:" + "a" * 64},
                 "pip": {"count": 140, "digest": "sha256:" + "b" * 64}},
    "lock": {"file": "conda-lock.yml", "sha256": "c" * 64, "content_hash": "d" * 64, "platform": "linux-64",
             "matches": True},
    "code": {"repository": "/home/user/project", "git_commit": "e" * 40, "git_dirty": False},
    "host": {"name": "gpu-node-01"},
}


def gpu_doc() -> dict:
    """A fresh deep copy of the reference document."""
    return copy.deepcopy(_RUNTIME_GPU_DOC)


def with_value(doc: dict, dotted: str, value) -> dict:
    """A copy of DOC with the field at DOTTED (list indices as numbers) set to VALUE."""
    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc
