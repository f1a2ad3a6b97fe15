"""Run by tests/test_process_exit.py under torchrun (2 ranks, gloo): prints what process_exit sees, one JSON line per rank.

- `busy_seen`: while a large all_reduce runs, quiesce with no time to wait says at least once that a worker is
  busy (a worker just handed work may not have woken yet, so one look is not enough);
- `after_collective`: after the collective finished and was dropped: every worker is idle (True);
- `ddp_workers_after_destroy`: a DDP model holds the group, so destroy_process_group leaves its workers running;
- `ddp_quiesced`: quiesce still sees them idle, which is what makes the interpreter's end safe.
"""

import json

import torch
import torch.distributed as dist

from reprotrain.checkpoint import process_exit

dist.init_process_group("gloo")
rank = dist.get_rank()
report = {"rank": rank}
big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB: the exchange takes long enough to be seen in flight
work = dist.all_reduce(big, async_op=True)
report["busy_seen"] = False
while not work.is_completed() and not report["busy_seen"]:
    report["busy_seen"] = not process_exit.quiesce(timeout_s=0.0)
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
