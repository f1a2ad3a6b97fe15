"""Checkpoint save speed on a 512 MiB state, side by side in one run (medians, alternating order).

Run: python benchmarks/bench_checkpoint.py [--mib N] [--runs N]

Figures:
- the checkpoint file (write, CRC-32 + SHA-256 integrity, fsync) against the same bytes written with
  os.write + fsync (target <= 1.25x), and the whole durable save (plus the atomic rename and the directory
  fsync that makes the rename durable, which the baseline does not pay);
- the same save against torch.save + fsync (target: faster, ratio < 1);
- asynchronous save: time the training thread is blocked, against a synchronous save (target <= 0.25x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import format_rows  # noqa: E402

CHUNK = 16 << 20


def _state(mib: int):
    import torch

    torch.manual_seed(0)
    # A model-like state: a few large tensors and many small ones.
    big = mib - 8
    return {"model": {f"layer{i}.weight": torch.randn((big << 18) // 4) for i in range(4)}
            | {f"norm{i}.bias": torch.randn(2048) for i in range(256)},
            "optimizer": {"step": 10, "lr": 0.001}}


def _raw_write(state, folder: Path) -> None:
    """Baseline: the tensor bytes of the same state, written with os.write, then fsync."""
    import torch

    path = folder / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for tensor in state["model"].values():
            view = memoryview(torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy()).cast("B")
            for start in range(0, len(view), CHUNK):
                os.write(fd, view[start:start + CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def _torch_save(state, folder: Path) -> None:
    import torch

    path = folder / "torch.pth"
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def _reprotrain_write(state, folder: Path, manifest: dict) -> None:
    """The checkpoint bytes (pickle, tensors, CRC-32 and SHA-256 integrity) into a new file, then fsync:
    the same file handling as the os.write baseline."""
    from reprotrain.checkpoint import format as ckformat

    path = folder / "file.pth"
    with open(path, "wb", buffering=0) as f:
        ckformat.write(f, manifest, state)
        os.fsync(f.fileno())
    path.unlink()


def _reprotrain_save(state, run, manifest: dict) -> None:
    """The durable save of a run directory whose writer lock ``run`` holds (taken once, as a trainer does)."""
    from reprotrain.checkpoint import format as ckformat

    path = run.commit("ckpt.pth", lambda f: ckformat.write(f, manifest, state))
    path.unlink()


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def run(mib: int = 512, runs: int = 7) -> list[tuple[str, str, str, str, str]]:
    import torch

    from reprotrain.checkpoint import CheckpointManager, store

    state = _state(mib)
    manifest = {"kind": "latest"}
    folder = Path(tempfile.mkdtemp(prefix="reprotrain-bench-", dir=os.environ.get("BENCH_DIR")))
    durable_run = store.RunDirectory(folder / "run")
    durable_run.acquire()
    try:
        times: dict[str, list[float]] = {"raw": [], "torch": [], "file": [], "ours": []}
        jobs = {"raw": lambda: _raw_write(state, folder), "torch": lambda: _torch_save(state, folder),
                "file": lambda: _reprotrain_write(state, folder, manifest),
                "ours": lambda: _reprotrain_save(state, durable_run, manifest)}
        for name in jobs:  # warm the page cache and allocator once
            jobs[name]()
        for i in range(runs):
            order = list(jobs) if i % 2 == 0 else list(reversed(jobs))
            for name in order:
                os.sync()  # start each timing with no other writeback pending (the disk is shared and noisy)
                start = time.perf_counter()
                jobs[name]()
                times[name].append(time.perf_counter() - start)
        raw, tsave, file, ours = (_median(times[k]) for k in ("raw", "torch", "file", "ours"))

        # Asynchronous saves through the manager: blocked time vs a synchronous save of the same state.
        model = torch.nn.Module()
        for i, (k, v) in enumerate(state["model"].items()):
            model.register_buffer(f"b{i}", v)
        sync_times, block_times = [], []
        for mode in ("sync", "async"):
            run_dir = folder / mode
            mgr = CheckpointManager(run_dir, model, save_policy="never", async_save=(mode == "async"),
                                    log=lambda m: None)
            mgr.save("latest", epoch=0, step=0, samples_seen=0)  # warm-up: allocates snapshot buffers
            mgr.wait()
            for step in range(1, runs + 1):
                start = time.perf_counter()
                mgr.save("latest", epoch=0, step=step, samples_seen=step)
                (block_times if mode == "async" else sync_times).append(time.perf_counter() - start)
                mgr.wait()
            mgr.close()
            shutil.rmtree(run_dir)
        sync, block = _median(sync_times), _median(block_times)
    finally:
        durable_run.release()
        shutil.rmtree(folder, ignore_errors=True)
    size = f"{mib} MiB"
    return [
        (f"checkpoint write+digest+fsync, {size}", f"{file:.3f} s", "<= 1.25x", f"os.write+fsync {raw:.3f} s",
         f"{file / raw:.2f}x"),
        (f"durable save, {size} (+ atomic rename + directory fsync)", f"{ours:.3f} s", "<= 1.25x",
         f"os.write+fsync {raw:.3f} s", f"{ours / raw:.2f}x"),
        (f"durable save vs torch.save+fsync, {size}", f"{ours:.3f} s", "< 1.00x", f"torch.save+fsync {tsave:.3f} s",
         f"{ours / tsave:.2f}x"),
        (f"async save: training thread blocked, {size}", f"{block:.3f} s", "<= 0.25x", f"sync save {sync:.3f} s",
         f"{block / sync:.2f}x"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    print(format_rows(run(args.mib, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
