"""Shared helpers of the framework integration tests: run an example as a real process, stop it with a real signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
       "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def start(example: str, run_dir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, **ENV, **(env or {})}
    return subprocess.Popen([sys.executable, str(EXAMPLES / example), "--run-dir", str(run_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run(example: str, run_dir: Path, *args: str, env: dict | None = None) -> tuple[int, str, str]:
    return finish(start(example, run_dir, *args, env=env))


def interrupt_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int = signal.SIGINT,
                   timeout: float = 180) -> tuple[int, str, str]:
    """Send ``sig`` once ``ready()`` holds (a checkpoint exists), then wait for the process to end."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before it could be interrupted:\n{err[-3000:]}")
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(sig)
    return finish(proc)


def as_other_environment(manifest: dict, version: str = "1.13.1") -> dict:
    """The manifest as another environment (another torch minor) would have written it, digests consistent."""
    from reprotrain import fingerprint as fp

    other = dict(manifest["fingerprint"], torch=dict(manifest["fingerprint"]["torch"], version=version))
    digest = fp.digest(other)
    lineage = [dict(seg, fingerprint_digest=digest) for seg in manifest["lineage"]]
    return dict(manifest, fingerprint=other, fingerprint_digest=digest, environments={digest: other},
                lineage=lineage)


def reseal_with_torch_version(directory: Path, version: str = "1.13.1") -> None:
    """Seal ``directory`` again as if another environment (another torch minor) had written it."""
    from reprotrain.checkpoint import sealed

    sealed.seal(directory, as_other_environment(sealed.read_sidecar(directory)["manifest"], version))


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
