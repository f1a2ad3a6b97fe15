"""reprotrain against its peers at every size, side by side in one run (medians, alternating order).

Run: python benchmarks/bench_peers.py [--sizes 1,16,64,512,2048] [--runs 5] [--resume-sizes 64,512]

Save (durable: the bytes are on disk when the call returns), ratio to the same tensor bytes written with
os.write + fsync (raw):
- reprotrain: `CheckpointManager.save()` synchronous, end to end (state, manifest, checkpoint file with its
  integrity trailer, fsync, atomic rename, directory fsync, retention);
- torch.save into a file, then fsync; safetensors `save_file`, then fsync; torch.distributed.checkpoint
  `dcp.save` in one process (its writer fsyncs each file).
Target: reprotrain <= the fastest peer (raw-relative) at every size, and <= 1.10x raw from 64 MiB.

Resume (open + verify every byte + weights-only load) against plain `torch.load(weights_only=True)` of the same
file, page cache warm, and cold (the file's pages dropped with posix_fadvise(DONTNEED) after os.sync, before each
timing). Target <= 1.10x.

Asynchronous save: the time the training thread is blocked against a synchronous save (target <= 0.10x), and the
snapshot's resident memory against the state's size (target <= 1x), with its growth over later saves (reused
buffers: 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_checkpoint import _raw_write, _torch_save  # noqa: E402
from benchmarks.timing import format_rows  # noqa: E402

SIZES = (1, 16, 64, 512, 2048)
QUICK_SIZES = (1, 16)


def model_state(mib: int) -> dict:
    """A model-like state of ``mib`` MiB: four large tensors and 256 small ones (an eighth of it, at most 8 MiB)."""
    import torch

    torch.manual_seed(0)
    total = mib << 20
    small = min(total // 8, 8 << 20) // 256 // 4 * 4
    big = (total - small * 256) // 4 // 4 * 4
    state = {f"layer{i}.weight": torch.randn(big // 4) for i in range(4)}
    state |= {f"norm{i}.bias": torch.randn(small // 4) for i in range(256)}
    return state


class _Holder:
    """The model the manager saves: exactly ``state`` as its state_dict (no copy)."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state

    def parameters(self):
        return iter(())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safetensors(state: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    save_file(state, str(path))
    _fsync_path(path)
    path.unlink()


def _dcp(state: dict, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    path = folder / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": state}, checkpoint_id=str(path))
    shutil.rmtree(path)


class _ManagerSave:
    def __init__(self, state: dict, folder: Path, *, async_save: bool = False):
        from reprotrain.checkpoint import CheckpointManager

        self.mgr = CheckpointManager(folder / ("async" if async_save else "sync"), _Holder(state), save_policy="never",
                                     async_save=async_save, log=lambda message: None)
        self.step = 0

    def __call__(self) -> None:
        self.step += 1
        self.mgr.save("latest", epoch=0, step=self.step, samples_seen=self.step)

    def close(self) -> None:
        self.mgr.wait()
        self.mgr.close()


def _timed(jobs: dict, runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for job in jobs.values():  # warm the page cache and the allocator once
        job()
    for i in range(runs):
        for name in (list(jobs) if i % 2 == 0 else list(reversed(jobs))):
            os.sync()  # no other writeback pending at the start of a timing (the disk is shared and noisy)
            start = time.perf_counter()
            jobs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def save_rows(mib: int, runs: int, folder: Path) -> list[tuple]:
    state = model_state(mib)
    ours = _ManagerSave(state, folder)
    try:
        jobs = {"raw": lambda: _raw_write({"model": state}, folder), "reprotrain": ours,
                "torch.save": lambda: _torch_save(state, folder),
                "safetensors": lambda: _safetensors(state, folder), "dcp": lambda: _dcp(state, folder)}
        t = _timed(jobs, runs)
    finally:
        ours.close()
    raw = t["raw"]
    fastest_peer = min(("torch.save", "safetensors", "dcp"), key=lambda name: t[name])
    rows = [(f"save {mib} MiB: {name} (durable)", f"{t[name]:.4f} s",
             ("<= " + f"{t[fastest_peer] / raw:.2f}x ({fastest_peer})" + (", <= 1.10x" if mib >= 64 else ""))
             if name == "reprotrain" else "-", f"raw {raw:.4f} s", f"{t[name] / raw:.2f}x")
            for name in ("reprotrain", "torch.save", "safetensors", "dcp")]
    return rows


def _drop_cache(path: Path) -> None:
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resume_rows(mib: int, runs: int, folder: Path) -> list[tuple]:
    import torch

    from reprotrain.checkpoint import reader, state as ckstate

    saver = _ManagerSave(model_state(mib), folder)
    saver()
    path = Path(saver.mgr.last_saved)
    saver.close()

    def plain():
        torch.load(path, weights_only=True)

    def verified():
        with reader.open_checkpoint(path) as opened:
            ckstate.load(opened, verify=True)

    rows = []
    for cache in ("warm", "cold"):
        times: dict[str, list[float]] = {"torch.load": [], "reprotrain": []}
        jobs = {"torch.load": plain, "reprotrain": verified}
        for i in range(runs + 1):
            for name in (list(jobs) if i % 2 == 0 else list(reversed(jobs))):
                if cache == "cold":
                    _drop_cache(path)
                else:
                    jobs[name]()  # the file's pages and the allocator warm for this very job
                start = time.perf_counter()
                jobs[name]()
                if i:  # the first round warms imports
                    times[name].append(time.perf_counter() - start)
        plain_s, ours_s = (statistics.median(times[k]) for k in ("torch.load", "reprotrain"))
        rows.append((f"resume {mib} MiB, cache {cache}: open + verify every byte + weights-only load",
                     f"{ours_s:.4f} s", "<= 1.10x", f"torch.load {plain_s:.4f} s", f"{ours_s / plain_s:.2f}x"))
    return rows


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def async_rows(mib: int, runs: int, folder: Path) -> list[tuple]:
    state = model_state(mib)
    sync_save = _ManagerSave(state, folder)
    async_save = _ManagerSave(state, folder, async_save=True)
    try:
        sync_save()
        before = _rss()
        async_save()
        async_save.mgr.wait()
        after_first = _rss()
        stalls, syncs = [], []
        for _ in range(runs):
            os.sync()
            start = time.perf_counter()
            async_save()
            stalls.append(time.perf_counter() - start)
            async_save.mgr.wait()
            os.sync()
            start = time.perf_counter()
            sync_save()
            syncs.append(time.perf_counter() - start)
        after_all = _rss()
    finally:
        sync_save.close()
        async_save.close()
    stall, sync = statistics.median(stalls), statistics.median(syncs)
    size = mib << 20
    return [(f"async save {mib} MiB: training thread blocked", f"{stall:.4f} s", "<= 0.10x",
             f"sync save {sync:.4f} s", f"{stall / sync:.2f}x"),
            (f"async save {mib} MiB: snapshot resident memory", f"{(after_first - before) / 2**20:.1f} MiB",
             "<= 1x", f"state {mib} MiB", f"{(after_first - before) / size:.2f}x"),
            (f"async save {mib} MiB: memory growth over {runs} more saves (buffers reused)",
             f"{(after_all - after_first) / 2**20:.1f} MiB", "-", "-", "-")]


def run(quick: bool = False, sizes: tuple[int, ...] | None = None, runs: int | None = None,
        resume_sizes: tuple[int, ...] | None = None) -> list[tuple]:
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    runs = runs or (2 if quick else 5)
    resume_sizes = resume_sizes or ((16,) if quick else (64, 512))
    folder = Path(tempfile.mkdtemp(prefix="reprotrain-peers-", dir=os.environ.get("BENCH_DIR")))
    rows: list[tuple] = []
    try:
        for mib in sizes:
            rows += save_rows(mib, runs, folder)
        for mib in resume_sizes:
            rows += resume_rows(mib, runs, folder)
        for mib in sizes:
            rows += async_rows(mib, runs, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="MiB, comma-separated")
    parser.add_argument("--resume-sizes", default="64,512")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    parse = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
    print(format_rows(run(sizes=parse(args.sizes), runs=args.runs, resume_sizes=parse(args.resume_sizes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
