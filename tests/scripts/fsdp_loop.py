"""A user's own FSDP2 training loop with CheckpointManager(sharded=True), run under torchrun by tests/test_sharded.py.

    torchrun --standalone --nproc-per-node W tests/scripts/fsdp_loop.py RUN_DIR STEPS [--resume PATH]

A tiny regression model (fully_shard on CPU, gloo), one save every 2 steps, keep_last 3. Environment switches:
FSDP_TEST_PID_DIR (each rank writes rank<R>.pid), FSDP_TEST_DELAY (seconds per step, so that a signal lands
mid-run), FSDP_TEST_KILL_RANK1_AT_SAVE=N (rank 1 SIGKILLs itself inside its N-th dcp write, mid-save).
Each step's loss goes to RUN_DIR/loss-rank<R>.jsonl.
"""

from __future__ import annotations

import json
import os
import signal
import sys
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
    mgr = CheckpointManager(run_dir, model, opt, sharded=True, save_policy="steps:2",
                            retention=RetentionPolicy(keep_last=3, keep_best=0), config={"task": "fsdp-test"})
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
                mgr.step_done(epoch=0, step=step, samples_seen=step * 8)
        mgr.finish()
    except Interrupted as stop:
        mgr.close()
        dist.destroy_process_group()
        return stop.exit_code
    dist.destroy_process_group()
    return 0


def _kill_rank1_mid_save(rank: int) -> None:
    at = int(os.environ.get("FSDP_TEST_KILL_RANK1_AT_SAVE", "0"))
    if not at or rank != 1:
        return
    from torch.distributed.checkpoint import filesystem

    original_item, original_write, saves = filesystem._write_item, filesystem._FileSystemWriter.write_data, [0]

    def counting_write_data(self, *args, **kwargs):
        saves[0] += 1
        return original_write(self, *args, **kwargs)

    def dying_write_item(*args, **kwargs):
        if saves[0] == at:  # inside the N-th save, before this rank's first shard is complete
            os.kill(os.getpid(), signal.SIGKILL)
        return original_item(*args, **kwargs)

    filesystem._FileSystemWriter.write_data = counting_write_data
    filesystem._write_item = dying_write_item


if __name__ == "__main__":
    sys.exit(main())
