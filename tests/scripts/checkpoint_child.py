"""A real training-like child process for checkpoint tests (killed, interrupted, failed on purpose).

usage: checkpoint_child.py RUN_DIR MODE [STEPS]
MODE: loop      save every step forever (the parent SIGKILLs it at random instants)
      guard     train under mgr.guard(), one step every 20 ms, until a signal arrives
      slow      like guard, but every step after the second takes 60 s (a long step in flight)
      raise     raise RuntimeError at step 5 under the guard
      nonfinite save an emergency after a non-finite loss at step 4
Prints "step N" after each step_done, flushed, so the parent can time its signals.
"""

import sys
import time

import torch

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy

run_dir, mode = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
policy = "steps:1" if mode == "loop" else "never"
mgr = CheckpointManager(run_dir, model, optimizer, save_policy=policy, retention=RetentionPolicy(keep_last=2), quiet=True,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
info = mgr.resume()
step = info.step if info else 0


def train_step():
    loss = model(torch.randn(32, 64)).logsumexp(dim=1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


with mgr.guard():
    while True:
        loss = train_step()
        step += 1
        if mode == "raise" and step == 5:
            raise RuntimeError("broken batch at step 5")
        if mode == "nonfinite" and step == 4:
            mgr.emergency("non-finite loss (nan) at step 4", resumable=False)
            sys.exit(3)
        mgr.step_done(epoch=0, step=step, samples_seen=step * 32, position={"batch": step})
        print(f"step {step}", flush=True)
        if mode == "guard":
            time.sleep(0.02)
        if mode == "slow" and step >= 2:
            time.sleep(60)
