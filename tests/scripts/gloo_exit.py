"""Run by tests/test_process_exit.py under torchrun (2 ranks, gloo): prints what process_exit sees, one JSON line per rank.

- `busy_while_waiting` (rank 0): rank 0 starts an all_reduce that rank 1 joins only a second later; meanwhile
  rank 0's worker waits for rank 1's data (a timed wait: not idle), so quiesce with no time to wait says False;
- `after_collective`: after the collective finished and was dropped: every worker is idle (True);
- `ddp_workers_after_destroy`: a DDP model holds the group, so destroy_process_group leaves its workers running;
- `ddp_quiesced`: quiesce still sees them idle, which is what makes the interpreter's end safe.
"""

import json
import time

import torch
import torch.distributed as dist

from reprotrain.checkpoint import process_exit

dist.init_process_group("gloo")
rank = dist.get_rank()
report = {"rank": rank}
data = torch.ones(1024)
if rank == 1:
    time.sleep(1.0)  # rank 0's collective is in flight, waiting for this rank, all this time
work = dist.all_reduce(data, async_op=True)
if rank == 0:
    time.sleep(0.3)  # let the worker take the work
    report["busy_while_waiting"] = not process_exit.quiesce(timeout_s=0.0)
work.wait()
del work
report["after_collective"] = process_exit.quiesce()
report["workers"] = len(process_exit.worker_threads())

model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
model(torch.ones(2, 4)).sum().backward()
dist.destroy_process_group()
report["ddp_workers_after_destroy"] = len(process_exit.worker_threads())
report["ddp_quiesced"] = process_exit.quiesce()
print(json.dumps(report), flush=True)
