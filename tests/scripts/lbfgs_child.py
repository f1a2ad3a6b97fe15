"""A third-party style full-batch LBFGS loop with CheckpointManagers: one optimizer step per epoch.

usage: lbfgs_child.py RUN_ROOT EPOCHS PAUSE_S POLICY [POLICY ...]
Trains one model per save policy in lockstep (run directory RUN_ROOT/<index>), each resumed from its own newest
checkpoint; prints "step N T" (T = time.monotonic()) after every policy's step_done for step N, flushed, so
the parent can SIGKILL it at a chosen step; "done" at the end.
"""

import sys
import time
from pathlib import Path

import torch


def build():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x @ torch.randn(10, 1)).tanh() + 0.05 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5, history_size=4)

    def closure():
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    return model, optimizer, closure


def reference(epochs: int):
    """The uninterrupted run, in the caller's process: (model state, optimizer state)."""
    model, optimizer, closure = build()
    for _ in range(epochs):
        optimizer.step(closure)
    return model.state_dict(), optimizer.state_dict()


def main() -> None:
    from reprotrain.checkpoint import CheckpointManager, RetentionPolicy

    root, epochs, pause, policies = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    runs = []
    for index, policy in enumerate(policies):
        model, optimizer, closure = build()
        mgr = CheckpointManager(root / str(index), model, optimizer, save_policy=policy, quiet=True,
                                retention=RetentionPolicy(keep_last=2),
                                log=lambda m: print(m, file=sys.stderr, flush=True))
        info = mgr.resume()
        runs.append([mgr, optimizer, closure, info.epoch if info else 0])
    for step in range(1, epochs + 1):
        for run in runs:
            mgr, optimizer, closure, done = run
            if done >= step:
                continue
            loss = optimizer.step(closure)
            run[3] = step
            mgr.step_done(epoch=step, step=step, samples_seen=256 * step, metrics={"loss": loss.item()},
                          epoch_end=True)
        print(f"step {step} {time.monotonic()}", flush=True)
        time.sleep(pause)
    for mgr, *_ in runs:
        mgr.finish()
    print("done", flush=True)


if __name__ == "__main__":
    main()
