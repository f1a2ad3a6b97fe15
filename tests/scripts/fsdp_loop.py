"""A user's own FSDP2 training loop with CheckpointManager(sharded=True), run under torchrun by tests/test_sharded.py.

    torchrun --standalone --nproc-per-node W tests/scripts/fsdp_loop.py RUN_DIR STEPS [--resume PATH]

A tiny regression model (fully_shard on CPU, gloo), one save every 2 steps, keep_last 3. Environment switches:
FSDP_TEST_PID_DIR (each rank writes rank<R>.pid), FSDP_TEST_DELAY (seconds per step, so that a signal lands
mid-run), FSDP_TEST_KILL_RANK1_AT_SAVE=N (rank 1 SIGKILLs itself inside its N-th dcp write, mid-save),
FSDP_TEST_ASYNC=1 (async_save=True: routine saves in the background), FSDP_TEST_FAIL_RANK1_AT_SAVE=N (rank 1's N-th
dcp write raises OSError), FSDP_TEST_SLOW_WRITE=S (every shard write takes S seconds longer).
Each step's loss goes to RUN_DIR/loss-rank<R>.jsonl; each sharded save's step, kind, thread, whether it ran on a
process group other than the default one, and the time step_done took, to RUN_DIR/saves-rank<R>.jsonl (also each
collective a background save thread runs, and the number of process groups before the manager and after close).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from reprotrain.checkpoint import CheckpointManager, Interrupted
from reprotrain.checkpoint.policies import RetentionPolicy


def main() -> int:
    run_dir, steps = Path(sys.argv[1]), int(sys.argv[2])
    resume = sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else None
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pid_dir = os.environ.get("FSDP_TEST_PID_DIR")
    if pid_dir:
        Path(pid_dir, f"rank{rank}.pid").write_text(str(os.getpid()))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _kill_rank1_mid_save(rank)
    _fail_or_slow_writes(rank)
    saves = _record_saves(run_dir, rank)
    groups = len(dist.distributed_c10d._world.pg_map)  # process groups before the manager (its own is given back)
    mgr = CheckpointManager(run_dir, model, opt, sharded=True, save_policy="steps:2",
                            retention=RetentionPolicy(keep_last=3, keep_best=0), config={"task": "fsdp-test"},
                            async_save=os.environ.get("FSDP_TEST_ASYNC") == "1")
    info = mgr.resume(resume) if resume else mgr.resume()
    step = info.step if info else 0
    g = torch.Generator().manual_seed(1234)
    xs, ys = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    delay = float(os.environ.get("FSDP_TEST_DELAY", "0"))
    losses = open(run_dir / f"loss-rank{rank}.jsonl", "a")
    try:
        with mgr.guard():
            while step < steps:
                # Global batch of 8 samples per step, split over the ranks (any world size sees the same data).
                lo = (step * 8) % 64
                x, y = xs[lo:lo + 8].chunk(world)[rank], ys[lo:lo + 8].chunk(world)[rank]
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                total = loss.detach().clone()
                dist.all_reduce(total)
                losses.write(json.dumps({"step": step, "loss": total.item() / world, "world": world}) + "\n")
                losses.flush()
                if delay:
                    time.sleep(delay)
                started = time.perf_counter()
                if mgr.step_done(epoch=0, step=step, samples_seen=step * 8) is not None:
                    saves.write(json.dumps({"step_done": step, "seconds": time.perf_counter() - started}) + "\n")
                    saves.flush()
        mgr.finish()
    except Interrupted as stop:
        mgr.close()
        _groups_left(saves, groups)
        dist.destroy_process_group()
        return stop.exit_code
    _groups_left(saves, groups)
    dist.destroy_process_group()
    return 0


def _groups_left(saves, before: int) -> None:
    saves.write(json.dumps({"groups_before_manager": before,
                            "groups_after_close": len(dist.distributed_c10d._world.pg_map)}) + "\n")


def _record_saves(run_dir: Path, rank: int):
    """Each sharded save (thread, group, duration) and each collective a background save thread runs (its group),
    written to RUN_DIR/saves-rank<R>.jsonl; returns the log."""
    from reprotrain.checkpoint import sharded

    lock = threading.Lock()

    class Log:  # opened at each line: the manager creates the run directory
        def write(self, line: str) -> None:
            with lock, open(run_dir / f"saves-rank{rank}.jsonl", "a") as out:
                out.write(line)

        def flush(self) -> None:
            pass

    log = Log()

    def own(group) -> bool:  # a process group other than the default one
        return group is not None and group != dist.group.WORLD

    def recording_save(run_dir_path, name, state_dict, manifest, *, group=None, _original=sharded.save):
        began = time.perf_counter()
        try:
            return _original(run_dir_path, name, state_dict, manifest, group=group)
        finally:
            log.write(json.dumps({"name": name, "thread": threading.current_thread().name, "own_group": own(group),
                                  "seconds": time.perf_counter() - began}) + "\n")

    sharded.save = recording_save

    def recording(fn_name, original):
        def collective(*args, **kwargs):
            if threading.current_thread().name == "reprotrain-save":
                log.write(json.dumps({"collective": fn_name, "own_group": own(kwargs.get("group"))}) + "\n")
                if not own(kwargs.get("group")):
                    # On the default group it would interleave with training's collectives (a mismatch, or a hang
                    # until a timeout): end the process now, recorded, so that the test fails at once.
                    os._exit(3)
            return original(*args, **kwargs)
        return collective

    for fn_name in ("all_gather_object", "gather_object", "broadcast_object_list", "scatter_object_list", "barrier",
                    "all_reduce", "all_gather", "broadcast"):
        setattr(dist, fn_name, recording(fn_name, getattr(dist, fn_name)))
    return log


def _before_each_dcp_write(action) -> None:
    """Run ``action(n)`` before DCP's filesystem writer writes each item of this process's n-th save."""
    from torch.distributed.checkpoint import filesystem

    original_item, original_write, saves = filesystem._write_item, filesystem._FileSystemWriter.write_data, [0]

    def counting_write_data(self, *args, **kwargs):
        saves[0] += 1
        return original_write(self, *args, **kwargs)

    def write_item(*args, **kwargs):
        action(saves[0])
        return original_item(*args, **kwargs)

    filesystem._FileSystemWriter.write_data = counting_write_data
    filesystem._write_item = write_item


def _fail_or_slow_writes(rank: int) -> None:
    at = int(os.environ.get("FSDP_TEST_FAIL_RANK1_AT_SAVE", "0"))
    slow = float(os.environ.get("FSDP_TEST_SLOW_WRITE", "0"))
    if not (at and rank == 1) and not slow:
        return

    def fail_or_slow(save: int) -> None:
        if slow:
            time.sleep(slow)
        if at and rank == 1 and save == at:
            raise OSError(28, "injected write failure")

    _before_each_dcp_write(fail_or_slow)


def _kill_rank1_mid_save(rank: int) -> None:
    at = int(os.environ.get("FSDP_TEST_KILL_RANK1_AT_SAVE", "0"))
    if not at or rank != 1:
        return

    def die(save: int) -> None:
        if save == at:  # inside the N-th save, before this rank's first shard is complete
            os.kill(os.getpid(), signal.SIGKILL)

    _before_each_dcp_write(die)


if __name__ == "__main__":
    sys.exit(main())
