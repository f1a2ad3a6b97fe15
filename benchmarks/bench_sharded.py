"""Sharded checkpoint save and load against plain torch.distributed.checkpoint, one process (medians, alternating order).

Run: python benchmarks/bench_sharded.py [--mib N [N ...]] [--runs N]

Figures (target <= 1.10x for both, issue 14):
- save: reprotrain.checkpoint.sharded.save (dcp.save into a partial directory through a writer that hashes each file
  while writing it and fsyncs it, the sealed sidecar, the atomic rename, directory fsyncs) against plain dcp.save of
  the same state into a fresh directory (DCP's default writer: fsync of every file, no hash), and against dcp.save
  followed by a second fsync of every file;
- load: sharded.load (sidecar, sizes and .metadata checked first, the shards' SHA-256 on a second thread while
  dcp.load reads with the weights-only planner) and sharded.load(verify_first=True) (every file hashed before
  dcp.load: what resume does for its last candidate) against plain dcp.load;
- per-rank peak memory: how far the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) rose
  above its resident set during one more call of each (Linux only);
- background saves (CheckpointManager(sharded=True, async_save=True)): how long the training thread is blocked
  (staging the state into host buffers kept between saves), against a sync sharded save through the manager and
  against plain dcp.async_save of the same model state (its staging, then the write on DCP's thread).

Under torchrun each rank hashes only what it writes, and on load its share of the files, so the per-rank cost falls
with the world size; this one-process figure is the worst case.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import format_rows, median_seconds  # noqa: E402


def _state(mib: int):
    import torch

    torch.manual_seed(0)
    big = max(mib - 4, 1)
    return {"model": {f"layer{i}.weight": torch.randn((big << 18) // 4) for i in range(4)}
            | {f"norm{i}.bias": torch.randn(1024) for i in range(256)},
            "optimizer": {"step": 10, "lr": 0.001}}


def _reset_peak_rss() -> bool:
    """Linux: reset this process's peak resident set (VmHWM) to the current one (proc(5), clear_refs value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_above(func) -> float | None:
    """MiB by which this process's peak resident set rose above its resident set while FUNC ran (Linux only)."""
    if not _reset_peak_rss():
        return None
    before = _current_rss_mib()
    func()
    return _peak_rss_mib() - before


def run(mib: int = 64, runs: int = 5) -> list[tuple[str, str, str, str, str]]:
    """Rows of (figure, value, target, baseline, ratio) for benchmarks/run.py."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    from reprotrain.checkpoint import CheckpointManager, sharded

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    args = argparse.Namespace(mib=mib, runs=runs)
    state = _state(args.mib)
    root = Path(tempfile.mkdtemp(prefix="bench-sharded-"))
    try:
        run = root / "run"
        mgr = CheckpointManager(run, None, sharded=True, log=lambda m: None)
        mgr._position = {"epoch": 0, "step": 1, "samples_seen": 1, "position": {}, "metrics": {}}
        manifest = mgr._manifest("latest", end_reason="running", reason=None, resumable=True, state={})
        counter = [0]

        def plain_save():
            counter[0] += 1
            target = root / f"plain{counter[0]}"
            dcp.save(state, checkpoint_id=target)
            shutil.rmtree(target)

        def durable_plain_save():
            counter[0] += 1
            target = root / f"durable{counter[0]}"
            dcp.save(state, checkpoint_id=target)
            for p in target.iterdir():
                fd = os.open(p, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            shutil.rmtree(target)

        def our_save():
            path = sharded.save(run, "step0000000001-latest.dcp", state, manifest)
            shutil.rmtree(path)

        kept = sharded.save(run, "step0000000002-latest.dcp", state, manifest)
        template = {"model": {k: torch.empty_like(v) for k, v in state["model"].items()},
                    "optimizer": {"step": 0, "lr": 0.0}}
        times = {"plain_save": [], "durable_save": [], "our_save": [], "plain_load": [], "our_load": [],
                 "first_load": []}
        for i in range(args.runs):  # alternate the order: a busy machine drifts
            order = [("plain_save", plain_save), ("durable_save", durable_plain_save), ("our_save", our_save),
                     ("plain_load", lambda: dcp.load(template, checkpoint_id=kept)),
                     ("our_load", lambda: sharded.load(kept, template)),
                     ("first_load", lambda: sharded.load(kept, template, verify_first=True))]
            for name, func in (order if i % 2 == 0 else order[::-1]):
                times[name].append(median_seconds(func, 1))
        rss = {name: peak_rss_above(func) for name, func in order}  # one more call each, its peak memory
        mgr.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    rows = _background_rows(args.mib, args.runs)
    rows += [
        (f"sharded save, {args.mib} MiB, 1 process", f"{med['our_save']:.3f} s", "<= 1.10x",
         f"dcp.save {med['plain_save']:.3f} s", f"{med['our_save'] / med['plain_save']:.2f}x"),
        ("sharded save vs durable dcp.save", f"{med['our_save']:.3f} s", "",
         f"dcp.save + fsync {med['durable_save']:.3f} s", f"{med['our_save'] / med['durable_save']:.2f}x"),
        (f"sharded load (checked), {args.mib} MiB", f"{med['our_load']:.3f} s", "<= 1.10x",
         f"dcp.load {med['plain_load']:.3f} s", f"{med['our_load'] / med['plain_load']:.2f}x"),
        (f"sharded load, every file hashed before DCP reads, {args.mib} MiB", f"{med['first_load']:.3f} s", "",
         f"dcp.load {med['plain_load']:.3f} s", f"{med['first_load'] / med['plain_load']:.2f}x"),
    ]
    if rss["our_save"] is not None:
        rows += [
            (f"peak RSS above the state, save, {args.mib} MiB", f"{rss['our_save']:.0f} MiB", "",
             f"dcp.save {rss['plain_save']:.0f} MiB", f"{rss['our_save'] - rss['plain_save']:+.0f} MiB"),
            (f"peak RSS above the state, load, {args.mib} MiB", f"{rss['our_load']:.0f} MiB", "",
             f"dcp.load {rss['plain_load']:.0f} MiB", f"{rss['our_load'] - rss['plain_load']:+.0f} MiB"),
        ]
    return rows


def _background_rows(mib: int, runs: int) -> list[tuple[str, str, str, str, str]]:
    """The training thread's stall of a background sharded save, against a sync one and dcp.async_save."""
    import statistics
    import time

    import torch
    import torch.distributed.checkpoint as dcp

    from reprotrain.checkpoint import CheckpointManager, sharded

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(max(mib // 4, 1))])  # 4 MiB each
    root = Path(tempfile.mkdtemp(prefix="bench-sharded-async-"))
    background = CheckpointManager(root / "async", model, sharded=True, async_save=True, log=lambda m: None)
    sync = CheckpointManager(root / "sync", model, sharded=True, log=lambda m: None)
    step, pending = [0], []
    stalls: dict[str, list[float]] = {"background": [], "sync": [], "dcp.async_save": []}

    def ours(manager, name):
        step[0] += 1
        start = time.perf_counter()
        manager.save("latest", epoch=0, step=step[0], samples_seen=step[0])
        stalls[name].append(time.perf_counter() - start)
        manager.wait()

    def peer():
        step[0] += 1
        state = sharded.get_state(model, None)
        start = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=root / f"peer{step[0]}")
        stalls["dcp.async_save"].append(time.perf_counter() - start)
        future.result()
        pending.append(root / f"peer{step[0]}")

    try:
        jobs = [lambda: ours(background, "background"), lambda: ours(sync, "sync"), peer]
        for job in jobs:  # the first of each allocates its buffers: not timed
            job()
        for values in stalls.values():
            values.clear()
        for i in range(runs):
            for job in (jobs if i % 2 == 0 else jobs[::-1]):
                job()
                while pending:
                    shutil.rmtree(pending.pop(), ignore_errors=True)
    finally:
        background.close()
        sync.close()
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in stalls.items()}
    return [
        (f"background sharded save, {mib} MiB: training thread blocked", f"{med['background'] * 1e3:.1f} ms",
         "<= 0.10x", f"sync sharded save {med['sync'] * 1e3:.0f} ms", f"{med['background'] / med['sync']:.2f}x"),
        (f"background sharded save, {mib} MiB: blocked against DCP's own", f"{med['background'] * 1e3:.1f} ms", "",
         f"dcp.async_save {med['dcp.async_save'] * 1e3:.1f} ms",
         f"{med['background'] / med['dcp.async_save']:.2f}x"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[64])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print(format_rows([row for mib in args.mib for row in run(mib, args.runs)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
